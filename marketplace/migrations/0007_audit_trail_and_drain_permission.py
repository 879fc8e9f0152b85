"""The audit trail's table, and on PostgreSQL a trigger that rejects UPDATE and DELETE of its rows.

The trigger raises SQLSTATE 23001 (restrict_violation), which Django reports as
``IntegrityError``, for every row an UPDATE or DELETE touches, whoever runs it. TRUNCATE is left
alone: test databases are flushed with it, and production takes it away from the web tier's role
(see docs/deploy.md). SQLite, used only for the demo, gets no trigger.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


IMMUTABLE_FUNCTION = """
CREATE OR REPLACE FUNCTION marketplace_audit_event_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit event % cannot be changed or deleted: the audit trail is append-only', OLD.id
        USING ERRCODE = 'restrict_violation',
              HINT = 'Record a new audit event that corrects the old one.';
END;
$$;
"""

IMMUTABLE_TRIGGER = """
CREATE TRIGGER marketplace_audit_event_immutable
    BEFORE UPDATE OR DELETE ON marketplace_auditevent
    FOR EACH ROW EXECUTE FUNCTION marketplace_audit_event_immutable();
"""


def install_trigger(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(IMMUTABLE_FUNCTION, params=None)
    schema_editor.execute(IMMUTABLE_TRIGGER, params=None)


def uninstall_trigger(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("DROP TRIGGER IF EXISTS marketplace_audit_event_immutable ON marketplace_auditevent")
    schema_editor.execute("DROP FUNCTION IF EXISTS marketplace_audit_event_immutable()")


class Migration(migrations.Migration):

    dependencies = [
        ('marketplace', '0006_gpu_first_reading_at'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterModelOptions(
            name='node',
            options={'ordering': ['hostname'], 'permissions': [('drain_node', 'Can drain nodes: no new work, and what runs there moves')]},
        ),
        migrations.CreateModel(
            name='AuditEvent',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('sequence', models.PositiveBigIntegerField(editable=False, unique=True)),
                ('at', models.DateTimeField(db_index=True)),
                ('actor_kind', models.CharField(choices=[('user', 'User'), ('node', 'Agent node key'), ('system', 'System or task')], max_length=16)),
                ('actor_label', models.CharField(help_text='Username, node key prefix and hostname, or task name, as it was when the event was recorded.', max_length=200)),
                ('action', models.CharField(db_index=True, help_text='Dotted name such as reservation.approve.', max_length=64)),
                ('object_type', models.CharField(help_text="The object's model label, such as allocation.reservation.", max_length=100)),
                ('object_id', models.CharField(blank=True, max_length=64)),
                ('details', models.JSONField(blank=True, default=dict, help_text='Before and after values of the changed fields, the reason, and counts.')),
                ('request_id', models.CharField(blank=True, help_text="The request's id, or the Celery task's id when a task decided.", max_length=64)),
                ('previous_hash', models.CharField(max_length=64)),
                ('hash', models.CharField(max_length=64, unique=True)),
                ('actor_user', models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('organization', models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='marketplace.organization')),
            ],
            options={
                'ordering': ['-sequence'],
                'indexes': [models.Index(fields=['organization', 'at'], name='audit_organization_at'), models.Index(fields=['object_type', 'object_id'], name='audit_object')],
            },
        ),
        migrations.RunPython(install_trigger, uninstall_trigger),
    ]
