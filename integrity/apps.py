from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class IntegrityConfig(AppConfig):
    default = True  # this module also holds IntegrityAdminConfig
    default_auto_field = "django.db.models.BigAutoField"
    name = "integrity"
    verbose_name = "Market-data integrity"


class IntegrityAdminConfig(admin_apps.AdminConfig):
    """``django.contrib.admin`` with ``IntegrityAdminSite`` as its default site (INSTALLED_APPS lists this)."""

    default = False
    default_site = "integrity.admin_site.IntegrityAdminSite"
