"""The authentication backend: Django's ``ModelBackend``, with a user's permissions read in one query.

Every API request checks the model permission of its endpoint (``integrity.api.permissions``), so a
non-superuser's permission set is read on every request: ``ModelBackend`` reads it in two queries (the
user's own, then their groups'), this backend in one (the union of both). Same set, same per-request
cache (``_perm_cache``), same rules for inactive, anonymous and superusers and for per-object checks
(none). tests/test_auth.py compares it with ``ModelBackend``.
"""

from __future__ import annotations

from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Permission


class ModelBackendOneQuery(ModelBackend):
    def get_all_permissions(self, user_obj, obj=None):
        if not user_obj.is_active or user_obj.is_anonymous or obj is not None:
            return set()
        if not hasattr(user_obj, "_perm_cache"):
            if user_obj.is_superuser:
                rows = Permission.objects.values_list("content_type__app_label", "codename").order_by()
            else:
                columns = ("content_type__app_label", "codename")
                own = Permission.objects.filter(user=user_obj).values_list(*columns).order_by()
                via_groups = Permission.objects.filter(group__user=user_obj).values_list(*columns).order_by()
                rows = own.union(via_groups)
            user_obj._perm_cache = {f"{app_label}.{codename}" for app_label, codename in rows}
        return user_obj._perm_cache
