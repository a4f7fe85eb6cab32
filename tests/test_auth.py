"""integrity.auth.ModelBackendOneQuery: Django's ModelBackend permission set, read in one query."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Group, Permission, User

from integrity.auth import ModelBackendOneQuery

pytestmark = pytest.mark.django_db


def fresh(user: User) -> User:
    return User.objects.get(pk=user.pk)  # no permission cache


def perms(*codenames: str) -> list[Permission]:
    return list(Permission.objects.filter(codename__in=codenames))


@pytest.fixture
def reviewer():
    user = User.objects.create_user("reviewer")
    user.user_permissions.set(perms("view_dataanomaly", "change_dataanomaly"))
    group = Group.objects.create(name="on-call")
    group.permissions.set(perms("view_dataanomaly", "view_backfillstate"))
    user.groups.add(group)
    Group.objects.create(name="other").permissions.set(perms("delete_instrument"))
    return user


def test_it_is_the_sites_backend():
    assert settings.AUTHENTICATION_BACKENDS == ["integrity.auth.ModelBackendOneQuery"]


def test_a_users_own_and_group_permissions_are_those_model_backend_gives(reviewer):
    expected = ModelBackend().get_all_permissions(fresh(reviewer))
    assert ModelBackendOneQuery().get_all_permissions(fresh(reviewer)) == expected
    assert expected == {"integrity.view_dataanomaly", "integrity.change_dataanomaly", "integrity.view_backfillstate"}


def test_they_are_read_in_one_query_and_kept_for_the_request(reviewer, django_assert_num_queries):
    user = fresh(reviewer)
    backend = ModelBackendOneQuery()
    with django_assert_num_queries(1):
        assert backend.has_perm(user, "integrity.view_backfillstate")
        assert not backend.has_perm(user, "integrity.delete_instrument")
        assert user.has_perms(["integrity.view_dataanomaly", "integrity.change_dataanomaly"])


@pytest.mark.parametrize("change", ["inactive", "superuser"])
def test_inactive_and_superusers_are_treated_as_model_backend_treats_them(reviewer, change):
    User.objects.filter(pk=reviewer.pk).update(**{"inactive": {"is_active": False},
                                                   "superuser": {"is_superuser": True}}[change])
    expected = ModelBackend().get_all_permissions(fresh(reviewer))
    assert ModelBackendOneQuery().get_all_permissions(fresh(reviewer)) == expected


def test_per_object_checks_grant_nothing(reviewer):
    anomaly_permission = "integrity.view_dataanomaly"
    assert not ModelBackendOneQuery().has_perm(fresh(reviewer), anomaly_permission, obj=object())
