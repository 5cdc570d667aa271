"""The one filter of the peer list, shared by the API list and the console card."""

import django_filters
from django_filters.widgets import BooleanWidget

from mesh.models import Peer


class PeerFilterSet(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=Peer.Status.choices)
    network = django_filters.CharFilter(field_name="network__name", help_text="network name")
    include_ended = django_filters.BooleanFilter(
        method="filter_include_ended", widget=BooleanWidget, help_text="also revoked and expired peers"
    )

    class Meta:
        model = Peer
        fields = ["status", "network", "include_ended"]

    def filter_include_ended(self, queryset, name, value):
        return queryset if value else queryset.filter(status=Peer.Status.ACTIVE)

    def filter_queryset(self, queryset):
        data = self.form.cleaned_data
        # A list shows working peers unless asked for ended ones (or a status).
        if data.get("include_ended") is None and not data.get("status"):
            queryset = queryset.filter(status=Peer.Status.ACTIVE)
        return super().filter_queryset(queryset).order_by("created_at")
