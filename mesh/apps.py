from django.apps import AppConfig


class MeshConfig(AppConfig):
    name = "mesh"

    def ready(self):
        from infrasim_site.cards import Card, register
        from mesh.views import card_context

        register(Card(name="mesh", template="mesh/_mesh_slot.html", context=lambda request: card_context(request.user), order=20))
