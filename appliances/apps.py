from django.apps import AppConfig


class AppliancesConfig(AppConfig):
    name = "appliances"

    def ready(self):
        from appliances.views import card_context
        from infrasim_site.cards import Card, register

        register(Card(name="appliances", template="appliances/_appliances_slot.html",
                      context=lambda request: card_context(request.user), order=30))
