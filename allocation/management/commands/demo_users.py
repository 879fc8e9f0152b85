"""``python manage.py demo_users``: create the demo admin and a demo customer user, and print their credentials."""

import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token

from marketplace.models import Membership, Organization

DEMO_CUSTOMER_SLUG = "orbit-vision"


class Command(BaseCommand):
    help = "Create (or keep) the demo superuser and a customer user with an API token; print the credentials."

    def handle(self, *args, **options):
        User = get_user_model()
        password = os.environ.get("DEMO_ADMIN_PASSWORD", "demo-admin-password")

        admin, created = User.objects.get_or_create(username="admin", defaults={"is_staff": True, "is_superuser": True})
        if created:
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

        self.stdout.write(f"Admin:     http://127.0.0.1:8000/admin/  user 'admin', password '{password}' (set when first created)")
        self.stdout.write(f"API token of customer user 'orbit' ({DEMO_CUSTOMER_SLUG}): {token.key}")
        self.stdout.write("API docs:  http://127.0.0.1:8000/api/docs/")
