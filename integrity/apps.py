from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class IntegrityConfig(AppConfig):
    default = True  # this module also holds IntegrityAdminConfig
    default_auto_field = "django.db.models.BigAutoField"
    name = "integrity"
    verbose_name = "Market-data integrity"

    def ready(self):
        from django.db.models.signals import post_migrate

        from .queue import create_stats_cache_table

        # The cache the django-q2 clusters' heartbeats live in (integrity.queue) is a database table.
        post_migrate.connect(create_stats_cache_table, sender=self, dispatch_uid="integrity.stats_cache_table")


class IntegrityAdminConfig(admin_apps.AdminConfig):
    """``django.contrib.admin`` with ``IntegrityAdminSite`` as its default site (INSTALLED_APPS lists this)."""

    default = False
    default_site = "integrity.admin_site.IntegrityAdminSite"
