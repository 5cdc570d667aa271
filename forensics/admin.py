from django import forms
from django.contrib import admin, messages
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html

from appliances.models import Appliance
from forensics import services
from forensics.models import Acquisition, LedgerCheckpoint, LedgerEntry, SigningKey
from forensics.views import RUNNING
from infrasim_site.errors import ServiceError


class _ReadOnlyAdmin(admin.ModelAdmin):
    """The database refuses changes to the log anyway."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(LedgerEntry)
class LedgerEntryAdmin(_ReadOnlyAdmin):
    list_display = ["index", "recorded_at", "kind", "actor", "subject", "concerns", "leaf_version"]
    list_filter = ["kind", "leaf_version"]
    search_fields = ["kind", "actor", "subject"]


@admin.register(LedgerCheckpoint)
class LedgerCheckpointAdmin(_ReadOnlyAdmin):
    list_display = ["size", "root_hex", "created_at"]
    fields = ["size", "root_hex", "created_at", "note"]
    readonly_fields = fields

    @admin.display(description="root")
    def root_hex(self, checkpoint: LedgerCheckpoint) -> str:
        return bytes(checkpoint.root).hex()


# --- Memory acquisitions and signing keys ----------------------------------------------------


class AcquisitionForm(forms.ModelForm):
    """"Capture memory" in the admin: the same service as the console and the
    API. The request is made while the form validates, so a refusal (busy,
    stopped, not allowed) stands beside its field like any form error."""

    appliance = forms.ModelChoiceField(queryset=Appliance.objects.filter(status__in=RUNNING).order_by("name"),
                                       help_text="A running appliance.")
    actor = None  # the operator, set by AcquisitionAdmin.get_form
    made: Acquisition | None = None

    class Meta:
        model = Acquisition
        fields = ["appliance", "case_ref", "reason", "format"]

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        try:
            self.made = services.acquisition_request(
                actor=self.actor, appliance_id=data["appliance"].pk, case_ref=data["case_ref"],
                reason=data["reason"], format=data["format"])
        except ServiceError as exc:
            raise ValidationError({exc.field if exc.field in self.fields else NON_FIELD_ERRORS: exc.message}) from exc
        return data


@admin.register(Acquisition)
class AcquisitionAdmin(admin.ModelAdmin):
    list_display = ["id", "case_ref", "appliance", "requested_by", "status", "progress", "size", "sha256_short",
                    "log_index", "cosigned", "created_at"]
    list_filter = ["phase", "format"]
    search_fields = ["case_ref", "reason", "sha256"]
    readonly_fields = ["requested_by", "appliance", "operation", "case_ref", "reason", "format", "status", "progress",
                       "last_error", "sha256", "size", "evidence_path", "s3_location", "signing_key", "log_index",
                       "custody", "cosignature", "downloads", "created_at", "completed_at"]
    exclude = ["phase", "failed_error", "envelope"]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = type("AcquisitionRequestForm", (AcquisitionForm,), {"actor": request.user})
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        return ["appliance", "case_ref", "reason", "format"] if obj is None else self.readonly_fields

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def get_changeform_initial_data(self, request):
        return {"appliance": request.GET.get("appliance")}

    def has_change_permission(self, request, obj=None):
        return obj is None or request.method == "GET"

    def has_delete_permission(self, request, obj=None):
        return False  # evidence and its custody record are kept

    def save_model(self, request, obj, form, change):
        obj.pk = form.made.pk  # the service made the row while the form validated

    def save_related(self, request, form, formsets, change):
        pass  # the service made the row

    @admin.display(description="SHA-256")
    def sha256_short(self, acquisition):
        return f"{acquisition.sha256[:16]}…" if acquisition.sha256 else ""

    @admin.display(boolean=True, description="co-signed")
    def cosigned(self, acquisition):
        return bool(acquisition.cosignature)

    @admin.display(description="downloads")
    def downloads(self, acquisition):
        if acquisition.status != Acquisition.Phase.COMPLETE:
            return "when complete"
        base = f"/api/forensics/acquisitions/{acquisition.pk}"
        return format_html('<a href="{}/evidence">the dump</a> · <a href="{}/bundle">the bundle</a>', base, base)


@admin.register(SigningKey)
class SigningKeyAdmin(admin.ModelAdmin):
    list_display = ["key_id", "handle", "user", "created_at", "retired_at"]
    list_filter = ["retired_at"]
    search_fields = ["key_id", "handle"]
    fields = ["key_id", "handle", "user", "created_at", "retired_at"]
    readonly_fields = fields
    actions = ["rotate"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # retired keys stay published

    @admin.action(description="Rotate: retire the key and make its owner a new one")
    def rotate(self, request, queryset):
        users = {key.user for key in queryset if key.user is not None and key.retired_at is None}
        for user in users:
            made = services.signing_key_rotate(actor=request.user, user_id=user.pk)
            self.message_user(request, f"{user.display_name}: new key {made.key_id[:16]}…")
        if not users:
            self.message_user(request, "Only current keys rotate; the selection had none.", messages.WARNING)


@admin.action(description="Capture memory (forensics)")
def capture_memory(modeladmin, request, queryset):
    """On the appliances list: opens the capture form for the one chosen."""
    if queryset.count() != 1:
        modeladmin.message_user(request, "Choose one running appliance to capture.", messages.WARNING)
        return None
    return HttpResponseRedirect(f"{reverse('admin:forensics_acquisition_add')}?appliance={queryset.first().pk}")
