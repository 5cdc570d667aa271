from django.apps import AppConfig


class ForensicsConfig(AppConfig):
    name = "forensics"

    def ready(self) -> None:
        # Memory capture runs as an appliance job (one at a time per
        # appliance, on its host's queue); appliances may not import us.
        from appliances import jobs as appliance_jobs
        from appliances.models import Operation
        from forensics import jobs

        appliance_jobs.register_handler(Operation.Kind.MEMORY_DUMP, jobs.run_dump)

        from forensics.views import card_context
        from infrasim_site.cards import Card, register

        register(Card(name="forensics", template="forensics/_forensics_slot.html",
                      context=lambda request: card_context(request.user), order=40))

        # "Capture memory" on the appliances list. Admin modules are all
        # loaded by now (the admin app's ready() runs first).
        from django.contrib import admin

        from appliances.models import Appliance
        from forensics.admin import capture_memory

        appliance_admin = admin.site._registry.get(Appliance)
        if appliance_admin is not None and capture_memory not in appliance_admin.actions:
            appliance_admin.actions = [*appliance_admin.actions, capture_memory]
