"""Record the adds, changes and deletes made in the Django admin in the audit trail."""

from django.contrib import admin
from django.db import transaction
from django.db.models import Model

from .audit import audit_record
from .models import Organization


class AuditedModelAdmin(admin.ModelAdmin):
    """A model admin whose adds, changes and deletes, inline rows included, are recorded in the audit trail.

    Actions are ``<model>.create``, ``<model>.change`` and ``<model>.delete`` (model names in lower
    case, such as ``quota.change``), with the changed fields' values before and after. The event
    belongs to the object's ``organization`` when it has one. A subclass that overrides
    ``save_model`` calls ``audit_admin_save`` itself after saving.
    """

    def save_model(self, request, obj, form, change):
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            audit_admin_save(request, obj, form, change)

    def delete_model(self, request, obj):
        with transaction.atomic():
            audit_admin_delete(request, obj)
            super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for obj in queryset:
                audit_admin_delete(request, obj)
            super().delete_queryset(request, queryset)

    def save_formset(self, request, form, formset, change):
        with transaction.atomic():
            super().save_formset(request, form, formset, change)
            parent = {"parent": {"type": form.instance._meta.label_lower, "id": form.instance.pk}}
            for obj in formset.new_objects:
                _record(request, obj, "create", {**parent, "after": _fields(obj)})
            for obj, changed in formset.changed_objects:
                _record(request, obj, "change", {**parent, "after": {name: _plain(getattr(obj, name, None))
                                                                     for name in changed}})
            for obj in formset.deleted_objects:
                _record(request, obj, "delete", {**parent, "before": _fields(obj)})


def audit_admin_save(request, obj: Model, form, change: bool) -> None:
    """Record an admin's add (every field) or change (the changed fields, before and after) of ``obj``."""
    if not change:
        _record(request, obj, "create", {"after": _fields(obj)})
        return
    changed = list(form.changed_data)
    details = {"before": {name: _plain(form.initial.get(name)) for name in changed},
               "after": {name: _plain(form.cleaned_data.get(name)) for name in changed}}
    _record(request, obj, "change", details)


def audit_admin_delete(request, obj: Model) -> None:
    """Record an admin's delete of ``obj`` with its field values; call it before deleting."""
    _record(request, obj, "delete", {"before": _fields(obj)})


def _record(request, obj: Model, verb: str, details: dict) -> None:
    audit_record(action=f"{obj._meta.model_name}.{verb}", obj=obj, actor=request.user,
                 organization=_organization_of(obj), details={**details, "via": "admin"})


def _organization_of(obj: Model) -> int | None:
    if isinstance(obj, Organization):
        return obj.pk
    organization_id = getattr(obj, "organization_id", None)
    return organization_id if isinstance(organization_id, int) else None


def _fields(obj: Model) -> dict:
    """Return the concrete field values of ``obj``, with foreign keys as ids."""
    return {field.attname: _plain(getattr(obj, field.attname)) for field in obj._meta.concrete_fields
            if not field.primary_key}


def _plain(value):
    """Return ``value`` as the audit trail stores it: a model instance becomes its primary key."""
    if isinstance(value, Model):
        return value.pk
    if hasattr(value, "all") and hasattr(value, "model"):  # a queryset from a many-to-many field
        return sorted(item.pk for item in value)
    return value
