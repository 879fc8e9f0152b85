from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("marketplace", "0005_health_events_and_risk")]
    operations = [
        migrations.RenameField(model_name="gpu", old_name="last_reading_at", new_name="first_reading_at"),
        migrations.AlterField(
            model_name="gpu", name="first_reading_at",
            field=models.DateTimeField(blank=True, null=True, help_text=(
                "When the GPU first reported; a listed GPU that never reported can be adopted.")),
        ),
    ]
