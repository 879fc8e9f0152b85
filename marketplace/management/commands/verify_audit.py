"""``python manage.py verify_audit``: walk the audit trail's hash chain and report the first broken event."""

import logging

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from marketplace.audit import audit_chain_verify

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = ("Check every audit event's hash and its link to the previous event. Exits 0 and prints the newest "
            "event's sequence and hash when the chain holds; exits 1 naming the first broken event otherwise, and 2 "
            "when the database cannot be read.")

    def handle(self, *args, **options):
        logger.info("Audit chain verification started")
        try:
            broken, last = audit_chain_verify()
        except DatabaseError as error:
            logger.error("Audit chain verification could not read the database: %s", error)
            raise CommandError(f"Could not read the audit trail ({error}). Nothing was verified; check DATABASE_URL "
                               f"and that the database is up, then run the command again.", returncode=2)
        if broken is not None:
            logger.error("Audit chain broken at sequence %s (event %s): %s", broken.sequence, broken.event_id,
                         broken.problem)
            checked = f"Events up to sequence {last.sequence} verify. " if last else ""
            raise CommandError(
                f"Audit chain broken at sequence {broken.sequence} (event id {broken.event_id}): {broken.problem}. "
                f"{checked}Compare the event with a backup, and find who could write to the audit table.")
        if last is None:
            self.stdout.write("The audit trail is empty.")
        else:
            self.stdout.write(f"The audit chain verifies: {last.sequence} events; the newest hash is {last.hash}. "
                              f"Keep this line outside the database to detect deleted newest events later.")
        logger.info("Audit chain verification finished: %s events", last.sequence if last else 0)
