from django.core.management.base import BaseCommand, CommandError

from identity import services
from infrasim_site.errors import ServiceError


class Command(BaseCommand):
    help = "Create an operator (staff) account and print its one-time passkey enrollment link."

    def add_arguments(self, parser):
        parser.add_argument("display_name", help="The operator's name, as shown in the admin.")

    def handle(self, *args, display_name: str, **options):
        try:
            user, token = services.operator_create(display_name=display_name)
        except ServiceError as exc:
            raise CommandError(f"{exc.field or 'error'}: {exc.message}") from None
        self.stdout.write(f"Operator '{user.display_name}' created. Open this link once to register a passkey:")
        self.stdout.write(services.enrollment_url(token))
