"""Seed the GPU model catalogue with the models of the Alibaba GPU cluster trace 2023.

Memory sizes are the vendors' published figures. G2 and G3 are internal codes that Alibaba did not
disclose, so their vendor and memory stay unknown.
"""

from django.db import migrations

CATALOGUE = [
    ("A10", "NVIDIA", 24, "NVIDIA A10, Ampere"),
    ("G2", "undisclosed", None, "Alibaba internal code; the trace does not disclose the model"),
    ("G3", "undisclosed", None, "Alibaba internal code; the trace does not disclose the model"),
    ("P100", "NVIDIA", 16, "NVIDIA Tesla P100, Pascal"),
    ("T4", "NVIDIA", 16, "NVIDIA T4, Turing"),
    ("V100M16", "NVIDIA", 16, "NVIDIA V100 with 16 GB, Volta"),
    ("V100M32", "NVIDIA", 32, "NVIDIA V100 with 32 GB, Volta"),
]


def seed(apps, schema_editor):
    GpuModel = apps.get_model("marketplace", "GpuModel")
    for name, vendor, memory_gib, description in CATALOGUE:
        GpuModel.objects.get_or_create(
            name=name, defaults={"vendor": vendor, "memory_gib": memory_gib, "description": description},
        )


def unseed(apps, schema_editor):
    apps.get_model("marketplace", "GpuModel").objects.filter(name__in=[row[0] for row in CATALOGUE]).delete()


class Migration(migrations.Migration):
    dependencies = [("marketplace", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
