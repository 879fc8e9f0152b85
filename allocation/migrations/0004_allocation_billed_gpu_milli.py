from django.db import migrations, models


def bill_existing(apps, schema_editor):
    """Bill allocations made before dominant-share billing for their GPU share, as they were priced."""
    Allocation = apps.get_model("allocation", "Allocation")
    Allocation.objects.update(billed_gpu_milli=models.F("gpu_milli_total"))


class Migration(migrations.Migration):
    dependencies = [("allocation", "0003_quota_customers_only")]

    operations = [
        migrations.AddField(
            model_name="allocation",
            name="billed_gpu_milli",
            field=models.PositiveIntegerField(
                default=0,
                help_text="GPU milli charged: the GPU share, or the node's GPUs in proportion to the CPU or "
                          "memory taken, whichever is larger.",
            ),
            preserve_default=False,
        ),
        migrations.RunPython(bill_existing, migrations.RunPython.noop),
    ]
