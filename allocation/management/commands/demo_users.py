"""``python manage.py demo_users``: create the demo admin, customer and provider users, and print their credentials."""

import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token

from marketplace.models import Membership, Node, Organization

DEMO_CUSTOMER_SLUG = "orbit-vision"
DEMO_PROVIDER_NODE = "openb-node-0022"
"""The demo provider user belongs to this node's provider; the README runs the demo agent on it."""


class Command(BaseCommand):
    help = "Create (or keep) the demo superuser and a customer user with an API token; print the credentials."

    def add_arguments(self, parser):
        parser.add_argument("--base-url", default="http://127.0.0.1:8000",
                            help="Address the site is served at, for the printed links.")
        parser.add_argument("--token-only", action="store_true",
                            help="Print only the API token of the demo customer user, for scripts.")

    def handle(self, *args, base_url: str, token_only: bool, **options):
        User = get_user_model()
        password = os.environ.get("DEMO_ADMIN_PASSWORD", "demo-admin-password")

        admin, admin_created = User.objects.get_or_create(
            username="admin", defaults={"is_staff": True, "is_superuser": True},
        )
        if admin_created:
            admin.set_password(password)
            admin.save()

        customer = Organization.objects.filter(slug=DEMO_CUSTOMER_SLUG).first()
        if customer is None:
            raise CommandError(f"Organization {DEMO_CUSTOMER_SLUG!r} is missing; run `python manage.py import_trace` first.")
        user, created = User.objects.get_or_create(username="orbit")
        if created:
            user.set_password(password)
            user.save()
        Membership.objects.get_or_create(user=user, defaults={"organization": customer, "role": Membership.Role.OWNER})
        token, _ = Token.objects.get_or_create(user=user)
        provider = Node.objects.filter(hostname=DEMO_PROVIDER_NODE).values_list("provider", flat=True).first()
        if provider is not None:
            provider_user, provider_created = User.objects.get_or_create(username="provider")
            if provider_created:
                provider_user.set_password(password)
                provider_user.save()
            Membership.objects.get_or_create(user=provider_user,
                                             defaults={"organization_id": provider, "role": Membership.Role.OWNER})

        if token_only:
            self.stdout.write(token.key)
            return
        base_url = base_url.rstrip("/")
        if admin_created:
            login = f"user 'admin', password '{password}'"
        else:
            login = "user 'admin', with the password it got when first created (see the README)"
        self.stdout.write(f"Admin:     {base_url}/admin/  {login}")
        self.stdout.write(f"API token of customer user 'orbit' ({DEMO_CUSTOMER_SLUG}): {token.key}")
        self.stdout.write(f"API docs:  {base_url}/api/docs/")
        if provider is not None:
            self.stdout.write(f"Provider portal: {base_url}/provider/  user 'provider', the admin's password; it "
                              f"owns {DEMO_PROVIDER_NODE} among others")
