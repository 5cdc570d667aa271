"""The console's card registry: each app registers its dashboard card in its
AppConfig.ready(), so a new app adds a card without editing the dashboard."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from django.http import HttpRequest


@dataclass(frozen=True)
class Card:
    name: str
    #: Renders the card's slot: the live-refresh wrapper and the card in it.
    template: str
    #: (request, **state) -> the template's context; `state` carries what a
    #: view hands back to its own card (e.g. a form with errors).
    context: Callable[..., dict]
    order: int = 100


_cards: dict[str, Card] = {}


def register(card: Card) -> None:
    _cards[card.name] = card


def registered() -> list[Card]:
    return sorted(_cards.values(), key=lambda card: (card.order, card.name))


def render_cards(request: HttpRequest, state: dict[str, dict] | None = None) -> list[str]:
    from django.template.loader import render_to_string

    state = state or {}
    return [
        render_to_string(card.template, card.context(request, **state.get(card.name, {})), request=request)
        for card in registered()
    ]
