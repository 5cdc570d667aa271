from django import forms
from django.contrib import admin, messages
from django.template.response import TemplateResponse

from identity.sessions import passkey_checked_recently
from infrasim_site.errors import ServiceError
from infrasim_site.http import no_store
from mesh import services
from mesh.models import AddressLease, MeshNetwork, NetworkRule, Peer, PeerShare


class MeshNetworkForm(forms.ModelForm):
    class Meta:
        model = MeshNetwork
        fields = "__all__"

    def clean(self):
        cleaned = super().clean()
        # The same rules the services apply, as form errors next to their field.
        try:
            if self.instance.pk is None and cleaned.get("ipv4_cidr") and cleaned.get("ipv6_prefix"):
                services.validate_network_prefixes(ipv4_cidr=cleaned["ipv4_cidr"], ipv6_prefix=cleaned["ipv6_prefix"])
            if self.instance.pk is not None:
                services.validate_network_update(self.instance, self.changed_fields())
        except ServiceError as exc:
            self.add_error(exc.field if exc.field in self.fields else None, exc.message)
        return cleaned

    def changed_fields(self) -> dict:
        return {
            name: self.cleaned_data[name]
            for name in self.changed_data
            if name in services.NETWORK_EDITABLE and name in self.cleaned_data
        }


class NetworkRuleInline(admin.TabularInline):
    """Read here; added and removed through the rule admin, which goes through the services."""

    model = NetworkRule
    fields = ["source", "destination", "description", "created_by", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(MeshNetwork)
class MeshNetworkAdmin(admin.ModelAdmin):
    form = MeshNetworkForm
    list_display = ["name", "ipv4_cidr", "ipv6_prefix", "endpoint", "interface", "generation", "applied_generation",
                    "applied_at", "last_sync_error"]
    readonly_fields = ["gateway_public_key", "generation", "applied_generation", "applied_at", "last_sync_error",
                       "created_at"]
    exclude = ["gateway_private_key_sealed"]
    actions = ["resync_gateway", "rotate_gateway_key"]

    def save_model(self, request, obj, form, change):
        if change:
            services.network_update(actor=request.user, network_id=obj.pk, **form.changed_fields())
            return
        # New networks go through the service: overlap checks, a sealed gateway key.
        created = services.network_create(
            actor=request.user, name=obj.name, ipv4_cidr=obj.ipv4_cidr, ipv6_prefix=obj.ipv6_prefix,
            endpoint=obj.endpoint or None, listen_port=obj.listen_port, interface=obj.interface or None,
            gateway_netns=obj.gateway_netns, gateway_queue=obj.gateway_queue or None,
        )
        obj.pk = created.pk

    def get_inlines(self, request, obj):
        return [NetworkRuleInline] if obj else []

    def get_fields(self, request, obj=None):
        editable = ["name", "ipv4_cidr", "ipv6_prefix", "endpoint", "listen_port", "interface", "gateway_netns",
                    "gateway_queue",
                    "default_keepalive", "peer_quota", "address_cooldown_seconds"]
        return editable + (self.readonly_fields if obj else [])

    def get_readonly_fields(self, request, obj=None):
        # Pools are fixed once peers hold addresses from them.
        return self.readonly_fields + (["ipv4_cidr", "ipv6_prefix"] if obj else [])

    @admin.action(description="Resync the gateway now")
    def resync_gateway(self, request, queryset):
        for network in queryset:
            services.network_bump(network)
        self.message_user(request, "Gateway sync queued.")

    @admin.action(description="Rotate the gateway key (every peer must fetch its config again)")
    def rotate_gateway_key(self, request, queryset):
        for network in queryset:
            services.network_rotate_gateway_key(actor=request.user, network_id=network.pk)
        self.message_user(request, "Gateway key rotated.")


@admin.register(Peer)
class PeerAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "network", "ipv4", "ipv6", "status", "key_epoch", "rotated_at",
                    "last_handshake_at", "expires_at"]
    list_filter = ["status", "network"]
    search_fields = ["name", "public_key", "ipv4", "ipv6", "owner__display_name"]
    readonly_fields = [f.name for f in Peer._meta.fields if f.name != "preshared_key_sealed"]
    exclude = ["preshared_key_sealed"]
    actions = ["revoke", "rotate_generated"]

    def has_add_permission(self, request):
        return False  # peers are created by their owners, with their own keys

    @admin.action(description="Revoke selected peers")
    def revoke(self, request, queryset):
        for peer in queryset:
            services.peer_revoke(actor=request.user, peer_id=peer.pk)
        self.message_user(request, "Revoked.")

    @admin.action(description="Rotate to a server-generated key (its config is shown here once)")
    def rotate_generated(self, request, queryset):
        # For devices an operator manages (appliances, gateways of branch
        # offices). The new private keys leave the server on this page only:
        # not in a message (which rides in a cookie), and, like any secret
        # export, only after a recent passkey check.
        if not passkey_checked_recently(request.session):
            self.message_user(
                request,
                "Confirm with your passkey first (Passkeys page → “Confirm with your passkey”), then rotate again: "
                "new private keys are shown only within 10 minutes of a passkey check.",
                messages.ERROR,
            )
            return None
        rotated, errors = [], []
        for peer in queryset:
            try:
                created = services.peer_rotate(actor=request.user, peer_id=peer.pk, generate_key=True)
            except ServiceError as exc:
                errors.append(f"{peer}: {exc.message}")
                continue
            rotated.append(
                {"peer": created.peer, "config": services.render_peer_config(created.peer, private_key=created.private_key)}
            )
        response = TemplateResponse(
            request,
            "admin/mesh/rotated_configs.html",
            {**self.admin_site.each_context(request), "rotated": rotated, "errors": errors},
        )
        return no_store(response)


@admin.register(AddressLease)
class AddressLeaseAdmin(admin.ModelAdmin):
    list_display = ["address", "network", "peer", "reserved", "note", "released_at"]
    list_filter = ["network", "reserved"]
    search_fields = ["address", "note"]
    readonly_fields = ["network", "address", "peer", "released_at"]

    def has_add_permission(self, request):
        return False  # reserve through the network's action or the service, which checks the pool


class NetworkRuleForm(forms.ModelForm):
    class Meta:
        model = NetworkRule
        fields = ["network", "source", "destination", "description"]

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("network"):
            try:
                services.validate_network_rule(
                    cleaned["network"], source=cleaned.get("source", ""), destination=cleaned.get("destination", "")
                )
            except ServiceError as exc:
                self.add_error(exc.field if exc.field in self.fields else None, exc.message)
        return cleaned


@admin.register(NetworkRule)
class NetworkRuleAdmin(admin.ModelAdmin):
    """Network-wide allowances beyond owners and shares. Rules are added and
    removed, never edited: each change is one ledger entry."""

    form = NetworkRuleForm
    list_display = ["network", "source", "destination", "description", "created_by", "created_at"]
    list_filter = ["network"]

    def has_change_permission(self, request, obj=None):
        return obj is None

    def save_model(self, request, obj, form, change):
        created = services.network_rule_create(
            actor=request.user, network_id=obj.network_id, source=obj.source, destination=obj.destination,
            description=obj.description,
        )
        obj.pk = created.pk

    def delete_model(self, request, obj):
        services.network_rule_delete(actor=request.user, rule_id=obj.pk)

    def delete_queryset(self, request, queryset):
        for rule in queryset:
            services.network_rule_delete(actor=request.user, rule_id=rule.pk)


@admin.register(PeerShare)
class PeerShareAdmin(admin.ModelAdmin):
    list_display = ["peer", "grantee", "created_by", "created_at"]
    list_filter = ["peer__network"]
    readonly_fields = ["peer", "grantee", "created_by", "created_at"]

    def has_add_permission(self, request):
        return False  # owners share their peers (API); the admin sees and withdraws

    def delete_model(self, request, obj):
        services.peer_share_delete(actor=request.user, peer_id=obj.peer_id, handle=obj.grantee.identity.handle)

    def delete_queryset(self, request, queryset):
        for share in queryset.select_related("grantee__identity"):
            self.delete_model(request, share)
