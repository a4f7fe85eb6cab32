"""The closures screen: list, record, edit and delete an instrument's closures (extra closed time).

The form checks what ``integrity.closures`` checks (symbol on the watchlist, end after start, bounded
length), and saving or deleting goes through its service, so the instrument's series are re-judged
by the next scan, as when the API or ``manage.py closures`` records one.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin

from ..closures import add_closure, change_closure, closure_errors, remove_closure
from ..models import InstrumentClosure
from .base import IntegrityModelAdmin


class ClosureForm(forms.ModelForm):
    class Meta:
        model = InstrumentClosure
        fields = ["symbol", "start", "end", "reason"]

    def clean(self):
        cleaned = super().clean()
        if {"symbol", "start", "end"} <= set(cleaned):
            for field, message in closure_errors(cleaned["symbol"], cleaned["start"], cleaned["end"]).items():
                self.add_error(field if field in self.fields else None, message)
        return cleaned


@admin.register(InstrumentClosure)
class InstrumentClosureAdmin(IntegrityModelAdmin):
    form = ClosureForm
    list_display = ("symbol", "start", "end", "reason", "created_by", "created_at")
    list_filter = ("symbol", "start")
    search_fields = ("symbol", "reason")
    date_hierarchy = "start"
    readonly_fields = ("created_by", "created_at")

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if change:
            original = InstrumentClosure.objects.get(pk=obj.pk)
            change_closure(original, data["symbol"], data["start"], data["end"], data.get("reason", ""))
        else:
            closure, _ = add_closure(data["symbol"], data["start"], data["end"], data.get("reason", ""),
                                     by=f"admin:{request.user.get_username()}")
            obj.pk, obj.created_by, obj.created_at = closure.pk, closure.created_by, closure.created_at

    def delete_model(self, request, obj):
        remove_closure(obj)

    def delete_queryset(self, request, queryset):
        for closure in queryset:
            remove_closure(closure)
