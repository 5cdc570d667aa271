from django.apps import AppConfig


class IdentityConfig(AppConfig):
    name = "identity"

    def ready(self):
        from identity.views import identity_card_context
        from infrasim_site.cards import Card, register

        register(Card(name="identity", template="identity/_identity_slot.html", context=identity_card_context, order=10))
