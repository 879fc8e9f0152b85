"""Drop the foreign key indexes that a composite index leading with the same column makes redundant.

Each placed reservation wrote an entry in every index of its reservation, allocation, share and
event rows. Six of them only repeated the first column of another index, which serves the same
lookups (joins, cascades, foreign key checks). Without them a placed reservation writes seven
fewer index entries and less WAL.
"""

from django.db import migrations, models
import django.db.models.deletion

from marketplace.online_indexes import redundant_index_drops

REDUNDANT = {
    "allocation_allocation_customer_id_991002ce": ("allocation_allocation", "customer_id"),  # allocation_customer_end
    "allocation_allocation_node_id_fbb5376d": ("allocation_allocation", "node_id"),  # allocation_node_end
    "allocation_gpushare_allocation_id_0a8b5a03": ("allocation_gpushare", "allocation_id"),  # share_one_per_gpu_...
    "allocation_gpushare_gpu_id_14267c81": ("allocation_gpushare", "gpu_id"),  # share_gpu_end
    "allocation_reservation_customer_id_16df2424": ("allocation_reservation", "customer_id"),  # reservation_customer_*
    "allocation_reservationevent_reservation_id_d9b16e82": ("allocation_reservationevent", "reservation_id"),
}
drop, rebuild = redundant_index_drops(REDUNDANT)


class Migration(migrations.Migration):

    atomic = False  # PostgreSQL drops an index concurrently only outside a transaction.

    dependencies = [
        ("allocation", "0025_admission_context_reads_feed"),
        ("marketplace", "0011_gpu_index_unique_in_service"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(drop, rebuild)],
            state_operations=[
                migrations.AlterField(
                    model_name="allocation", name="customer",
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT,
                                            related_name="+", to="marketplace.organization"),
                ),
                migrations.AlterField(
                    model_name="allocation", name="node",
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT,
                                            related_name="allocations", to="marketplace.node"),
                ),
                migrations.AlterField(
                    model_name="gpushare", name="allocation",
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE,
                                            related_name="shares", to="allocation.allocation"),
                ),
                migrations.AlterField(
                    model_name="gpushare", name="gpu",
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT,
                                            related_name="shares", to="marketplace.gpu"),
                ),
                migrations.AlterField(
                    model_name="reservation", name="customer",
                    field=models.ForeignKey(db_index=False, limit_choices_to={"kind": "customer"},
                                            on_delete=django.db.models.deletion.PROTECT,
                                            related_name="reservations", to="marketplace.organization"),
                ),
                migrations.AlterField(
                    model_name="reservationevent", name="reservation",
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE,
                                            related_name="events", to="allocation.reservation"),
                ),
            ],
        ),
    ]
