"""The one visibility rule (NetBox's `RestrictedQuerySet.restrict`): people
see their own objects, operators see everybody's. Every list, detail lookup
and service that loads an object by id goes through `visible_to`, so another
user's object is simply not found (404), never shown."""

from __future__ import annotations

from django.db import models


class OwnedQuerySet(models.QuerySet):
    #: The lookup that reaches the owning user; a model whose owner sits
    #: elsewhere subclasses this with e.g. owner_field = "identity__user".
    owner_field = "owner"

    def visible_to(self, user) -> "OwnedQuerySet":
        if user is None or not getattr(user, "is_authenticated", False):
            return self.none()
        if user.is_staff:
            return self
        return self.filter(**{self.owner_field: user})

    def owned_by(self, user) -> "OwnedQuerySet":
        """Only the user's own objects, also for operators (their own console cards)."""
        return self.filter(**{self.owner_field: user})

