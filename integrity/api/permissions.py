"""Reading needs the model's view permission; writing (including actions) its change permission."""

from __future__ import annotations

from rest_framework.permissions import DjangoModelPermissions


class ModelPermissions(DjangoModelPermissions):
    perms_map = {
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "OPTIONS": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
        "POST": ["%(app_label)s.change_%(model_name)s"],
        "PUT": ["%(app_label)s.change_%(model_name)s"],
        "PATCH": ["%(app_label)s.change_%(model_name)s"],
        "DELETE": ["%(app_label)s.delete_%(model_name)s"],
    }


class InstrumentPermissions(ModelPermissions):
    """Creating an instrument needs the add permission as well."""

    perms_map = {**ModelPermissions.perms_map,
                 "POST": ["%(app_label)s.add_%(model_name)s", "%(app_label)s.change_%(model_name)s"]}
