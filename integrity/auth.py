"""The authentication backend: Django's ``ModelBackend``, with a user's permissions read in one query.

Every API request checks the model permission of its endpoint (``integrity.api.permissions``), so a
non-superuser's permission set is read on every request: ``ModelBackend`` reads it in two queries (the
user's own, then their groups'), this backend in one (the union of both), a fixed statement built
once per process (the ORM would compile the union again on every request). Same set, same per-request
cache (``_perm_cache``), same rules for inactive, anonymous and superusers and for per-object checks
(none). tests/test_auth.py compares it with ``ModelBackend``.
"""

from __future__ import annotations

from functools import cache

from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Group, Permission, User
from django.contrib.contenttypes.models import ContentType
from django.db import connection


@cache
def _user_permissions_sql() -> str:
    """``app_label, codename`` of the permissions a user holds directly or through a group (one
    parameter twice: the user's id). Table and column names come from the models' metadata."""
    q = connection.ops.quote_name
    permission, content_type = Permission._meta, ContentType._meta
    own = User.user_permissions.through._meta
    group_permissions = Group.permissions.through._meta
    user_groups = User.groups.through._meta
    return (
        f"SELECT ct.{q('app_label')}, p.{q('codename')} FROM {q(permission.db_table)} p "
        f"JOIN {q(content_type.db_table)} ct ON ct.{q('id')} = p.{q('content_type_id')} "
        f"WHERE p.{q('id')} IN ("
        f"SELECT {q('permission_id')} FROM {q(own.db_table)} WHERE {q('user_id')} = %s "
        f"UNION SELECT gp.{q('permission_id')} FROM {q(group_permissions.db_table)} gp "
        f"JOIN {q(user_groups.db_table)} ug ON ug.{q('group_id')} = gp.{q('group_id')} WHERE ug.{q('user_id')} = %s)"
    )


class ModelBackendOneQuery(ModelBackend):
    def get_all_permissions(self, user_obj, obj=None):
        if not user_obj.is_active or user_obj.is_anonymous or obj is not None:
            return set()
        if not hasattr(user_obj, "_perm_cache"):
            if user_obj.is_superuser:
                rows = Permission.objects.values_list("content_type__app_label", "codename").order_by()
            else:
                with connection.cursor() as cursor:
                    cursor.execute(_user_permissions_sql(), [user_obj.pk, user_obj.pk])
                    rows = cursor.fetchall()
            user_obj._perm_cache = {f"{app_label}.{codename}" for app_label, codename in rows}
        return user_obj._perm_cache
