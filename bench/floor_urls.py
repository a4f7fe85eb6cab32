"""The benchmark's URLconf: the project's URLs plus ``/bench/floor/``, the floor of the stack.

The floor view returns the rows of the anomaly list's default page (same columns, same order, same
page size) through ``.values()`` and ``JsonResponse``: what Django itself costs for that page,
without DRF, authentication, filtering or pagination. Never part of the deployed site.
"""

from django.http import JsonResponse
from django.urls import path

from integrity.api.serializers import DataAnomalyListSerializer
from integrity.models import DataAnomaly
from marketdata_site.urls import urlpatterns as site_urlpatterns

PAGE_SIZE = 100
FIELDS = DataAnomalyListSerializer.Meta.fields


def floor(request):
    rows = list(DataAnomaly.objects.order_by("-detected_at", "-id").values(*FIELDS)[:PAGE_SIZE])
    return JsonResponse({"next": None, "previous": None, "results": rows})


urlpatterns = [path("bench/floor/", floor), *site_urlpatterns]
