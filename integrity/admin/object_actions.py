"""Buttons on an object's page for what a reviewer does next (Acknowledge, Resolve, Re-fetch this range,
Retry, Cancel), and the pages of admins whose writes the services own.

An object action is a method of a ``ModelAdmin`` decorated with ``@object_action`` and named in its
``object_actions``. Its button sits beside "History" on the object's page, only while the action applies
(``unavailable(obj)`` says why not, or None). The button opens a confirmation page (with the action's
form, if it has one: a reason, a note); its POST (CSRF-protected, permission-checked as Django checks
bulk actions: ``has_<permission>_permission(request)``) calls the same service function as the bulk
action and the API, then shows the one message the method returns (also kept in the object's
History when it succeeded), and goes back to the object (or where the method says: a retry goes to
the new execution).

URLs: ``<object_id>/<url>/``, named ``<app>_<model>_<url>`` (``admin:integrity_dataanomaly_repair``).

``ServiceOwnedAdmin``: an admin whose rows only the services write (anomalies, failure tracking). Its
object page has the action buttons but no Save and no Delete; a POST to the page itself saves nothing
and says so, so typing a note and pressing a button can never look like a review that did not happen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse


@dataclass(frozen=True)
class ActionResult:
    """What an object action did: its one message, at this level, and where to go next (None: back
    to the object's page)."""

    message: str
    level: int = messages.SUCCESS
    next_url: str | None = None


@dataclass(frozen=True)
class ObjectAction:
    name: str  # the method's name
    url: str  # the URL segment after the object id
    label: str  # the button
    explain: Callable[[Any], str]  # obj -> what pressing the button does (the confirmation page)
    unavailable: Callable[[Any], str | None]  # obj -> why the action does not apply (None: it does)
    form: type[forms.Form] | None
    permission: str  # has_<permission>_permission(request) must be True


def object_action(*, label: str, url: str, explain: Callable[[Any], str] | str,
                  unavailable: Callable[[Any], str | None] | None = None, form: type[forms.Form] | None = None,
                  permission: str = "change"):
    """Mark a ``ModelAdmin`` method ``(self, request, obj, data) -> ActionResult`` as an object action;
    ``data`` is the form's cleaned data (empty without a form)."""

    def decorate(func):
        func.object_action = ObjectAction(
            name=func.__name__, url=url, label=label,
            explain=explain if callable(explain) else (lambda obj: explain),
            unavailable=unavailable or (lambda obj: None), form=form, permission=permission)
        return func

    return decorate


class ObjectActionsMixin:
    """Wires the ``object_actions`` of a ``ModelAdmin`` (see the module's docstring)."""

    object_actions: tuple[str, ...] = ()
    change_form_template = "admin/integrity/change_form_actions.html"

    def get_object_actions(self) -> list[ObjectAction]:
        return [getattr(self, name).object_action for name in self.object_actions]

    def object_action_allowed(self, request, action: ObjectAction) -> bool:
        return getattr(self, f"has_{action.permission}_permission")(request)

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        own = [path(f"<path:object_id>/{action.url}/",
                    self.admin_site.admin_view(partial(self.object_action_view, action=action.name)),
                    name=f"{info[0]}_{info[1]}_{action.url}")
               for action in self.get_object_actions()]
        return [*own, *super().get_urls()]

    def object_buttons(self, request, obj) -> list[dict[str, str]]:
        """The buttons the object's page shows: the actions that apply to ``obj`` and that the user may run."""
        info = self.opts.app_label, self.opts.model_name
        return [{"label": action.label, "name": action.name,
                 "url": reverse(f"admin:{info[0]}_{info[1]}_{action.url}", args=[quote(obj.pk)])}
                for action in self.get_object_actions()
                if self.object_action_allowed(request, action) and action.unavailable(obj) is None]

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        context["object_buttons"] = self.object_buttons(request, obj) if obj is not None else []
        return super().render_change_form(request, context, add, change, form_url, obj)

    def object_url(self, obj) -> str:
        return reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[quote(obj.pk)])

    def object_action_view(self, request, object_id, action: str):
        """GET: the confirmation page (and the form); POST: run the action, one message, then onwards."""
        spec = getattr(self, action).object_action
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.object_action_allowed(request, spec):
            raise PermissionDenied(f"you may not {spec.label.lower()} here")
        form = None
        if request.method == "POST":
            form = spec.form(request.POST) if spec.form else None
            if form is None or form.is_valid():
                result = getattr(self, action)(request, obj, form.cleaned_data if form else {})
                if result.level == messages.SUCCESS:  # the object's History lists what its buttons did
                    self.log_change(request, obj, f"{spec.label}: {result.message}")
                self.message_user(request, result.message, result.level)
                return redirect(result.next_url or self.object_url(obj))
        else:
            why = spec.unavailable(obj)
            if why:
                self.message_user(request, f"{spec.label}: not possible — {why}", messages.WARNING)
                return redirect(self.object_url(obj))
            form = spec.form() if spec.form else None
        context = {**self.admin_site.each_context(request), "title": f"{spec.label}: {obj}", "opts": self.opts,
                   "original": obj, "object_url": self.object_url(obj), "action": spec,
                   "explanation": spec.explain(obj), "form": form}
        return TemplateResponse(request, "admin/integrity/object_action.html", context)


class ServiceOwnedAdmin(ObjectActionsMixin):
    """The rows only the services write: the object's page shows them with their action buttons, no
    Save and no Delete; a POST to the page saves nothing, and says so."""

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_readonly_fields(self, request, obj=None):
        shown = self.fields or [f.name for f in self.opts.fields if f.editable and not f.auto_created]
        return list(dict.fromkeys([*super().get_readonly_fields(request, obj), *shown]))

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        if request.method == "POST" and object_id is not None:
            obj = self.get_object(request, unquote(object_id))
            if obj is not None:
                self.message_user(request, "Nothing was saved: this page edits nothing; use the buttons above "
                                           "(" + (", ".join(b["label"] for b in self.object_buttons(request, obj))
                                                  or "none applies now") + ").", messages.WARNING)
                return redirect(self.object_url(obj))
        extra_context = {"title": f"Review {self.opts.verbose_name}", **(extra_context or {}), "show_save": False, "show_save_and_continue": False,
                         "show_save_and_add_another": False, "show_delete": False}
        return super().changeform_view(request, object_id, form_url, extra_context)


__all__ = ["ActionResult", "ObjectAction", "ObjectActionsMixin", "ServiceOwnedAdmin", "object_action"]
