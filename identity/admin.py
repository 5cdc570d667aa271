from datetime import timedelta

from django.conf import settings
from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.timesince import timeuntil

from identity import provisioning, services
from identity.models import ApiToken, Identity, OperatorEnrollment, ProvisioningStep, User
from identity.sessions import passkey_checked_recently
from infrasim_site.errors import ServiceError
from infrasim_site.http import no_store


@admin.register(User)
class UserAdmin(admin.ModelAdmin):
    """Accounts without any password field: people sign in with passkeys."""

    list_display = ["display_name", "account_id", "is_staff", "is_active", "signup_state", "date_joined"]
    list_filter = ["is_staff", "is_active", "signup_state"]
    search_fields = ["display_name", "account_id", "identity__handle"]
    fields = ["account_id", "display_name", "is_active", "is_staff", "is_superuser", "signup_state", "date_joined", "last_login"]
    readonly_fields = ["account_id", "signup_state", "date_joined", "last_login"]
    actions = ["issue_enrollment_link"]

    def has_add_permission(self, request):
        return False  # people sign up with a passkey; operators come from `manage.py createoperator`

    @admin.action(description="Issue a one-time passkey enrollment link (account recovery)")
    def issue_enrollment_link(self, request, queryset):
        # A link lets whoever holds it add a passkey to the account: issued
        # only after a recent passkey check, and shown on this page alone
        # (a message would ride in a cookie).
        if not passkey_checked_recently(request.session):
            self.message_user(
                request,
                "Confirm with your passkey first (Passkeys page → “Confirm with your passkey”), then issue the link "
                "again: recovery links are issued only within 10 minutes of a passkey check.",
                messages.ERROR,
            )
            return None
        links = [
            {"user": user, "url": services.enrollment_url(services.operator_enrollment_issue(user=user, actor=request.user))}
            for user in queryset
        ]
        context = {
            **self.admin_site.each_context(request),
            "links": links,
            "expires_in": f"in {timeuntil(timezone.now() + timedelta(seconds=settings.OPERATOR_ENROLLMENT_SECONDS))}",
        }
        return no_store(TemplateResponse(request, "admin/identity/enrollment_links.html", context))


class ProvisioningStepInline(admin.TabularInline):
    model = ProvisioningStep
    extra = 0
    can_delete = False
    readonly_fields = ["kind", "status", "attempts", "last_error", "detail", "next_attempt_at", "started_at", "finished_at"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Identity)
class IdentityAdmin(admin.ModelAdmin):
    list_display = ["handle", "user", "status", "step_states", "updated_at"]
    list_filter = ["status"]
    search_fields = ["handle", "user__display_name"]
    readonly_fields = ["user", "handle", "handle_skeleton", "status", "created_at", "updated_at"]
    inlines = [ProvisioningStepInline]
    actions = ["retry_provisioning", "cancel_identity"]

    def has_add_permission(self, request):
        return False  # handles are claimed by their owners, through the one validator

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("user").prefetch_related("steps")

    @admin.display(description="steps")
    def step_states(self, identity):
        return ", ".join(f"{step.kind}: {step.get_status_display()}" for step in identity.steps.all()) or "—"

    @admin.action(description="Retry provisioning")
    def retry_provisioning(self, request, queryset):
        for identity in queryset.select_related("user"):
            try:
                provisioning.identity_start_provisioning(actor=identity.user, requested_by=request.user)
            except ServiceError as exc:
                self.message_user(request, f"{identity}: {exc.message}", messages.ERROR)
        self.message_user(request, "Provisioning queued.")

    @admin.action(description="Cancel: remove what was provisioned and free the handle")
    def cancel_identity(self, request, queryset):
        for identity in queryset.select_related("user"):
            provisioning.identity_cancel(actor=identity.user, requested_by=request.user)
        self.message_user(request, "Cancellation queued.")


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix", "user__display_name"]
    readonly_fields = ["user", "name", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at"]
    exclude = ["secret_hash"]
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        for token in queryset:
            services.api_token_revoke(actor=request.user, token_id=token.pk)
        self.message_user(request, f"Revoked {queryset.count()} token(s).")


@admin.register(OperatorEnrollment)
class OperatorEnrollmentAdmin(admin.ModelAdmin):
    list_display = ["user", "created_at", "expires_at", "used_at"]
    readonly_fields = ["user", "created_at", "expires_at", "used_at"]
    exclude = ["token_hash"]

    def has_add_permission(self, request):
        return False
