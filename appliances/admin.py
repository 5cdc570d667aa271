"""Operators run hosts, the catalog and every appliance from here; each
action calls the same service the API and console call."""

from django.contrib import admin, messages
from django.utils.html import format_html

from appliances import exports, services
from appliances.models import Appliance, Archive, CacheEntry, Host, Operation, Snapshot, Template
from infrasim_site.errors import ServiceError
from infrasim_site.queueing import enqueue_on_commit

Kind = Operation.Kind


def _each(modeladmin, request, queryset, call, done: str) -> None:
    """Run `call` per object; report what worked and each refusal by name."""
    count = 0
    for obj in queryset:
        try:
            call(obj)
            count += 1
        except ServiceError as exc:
            modeladmin.message_user(request, f"{obj}: {exc.message}", messages.ERROR)
    if count:
        modeladmin.message_user(request, f"{done}: {count}.")


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    list_display = ["name", "libvirt_uri", "queue", "enabled", "acceleration", "capacity", "in_use", "health"]
    readonly_fields = ["acceleration", "acceleration_detail", "facts", "last_seen_at", "last_error", "created_at",
                       "in_use"]
    actions = ["probe", "reconcile"]

    @admin.display(description="capacity")
    def capacity(self, host):
        return f"{host.vcpus} vCPU, {host.memory_mib} MiB, {host.disk_gib} GiB"

    @admin.display(description="in use")
    def in_use(self, host):
        used = services.host_usage(host)
        return f"{used.count} appliances: {used.vcpus} vCPU, {used.memory_mib} MiB, {used.disk_gib} GiB"

    @admin.display(description="health")
    def health(self, host):
        if host.last_error:
            return format_html('<span title="{}">⚠ {}</span>', host.last_error, host.last_error[:60])
        return f"seen {host.last_seen_at:%Y-%m-%d %H:%M:%S}" if host.last_seen_at else "not seen yet"

    def save_model(self, request, obj, form, change):
        if not obj.queue:
            obj.queue = services.host_queue_name(obj.name)
        super().save_model(request, obj, form, change)
        if not change:
            enqueue_on_commit("appliances.tasks.probe_host", (obj.pk,), queue=obj.queue)

    @admin.action(description="Probe: versions, capacity and KVM or TCG")
    def probe(self, request, queryset):
        for host in queryset:
            enqueue_on_commit("appliances.tasks.probe_host", (host.pk,), queue=host.queue)
        self.message_user(request, f"Probe queued on {queryset.count()} host(s).")

    @admin.action(description="Reconcile libvirt with the database now")
    def reconcile(self, request, queryset):
        for host in queryset:
            enqueue_on_commit("appliances.tasks.reconcile_host", (host.pk,), queue=host.queue)
        self.message_user(request, f"Reconcile queued on {queryset.count()} host(s).")


class CacheEntryInline(admin.TabularInline):
    model = CacheEntry
    fields = ["host", "status", "detail", "digest", "size", "last_error", "finished_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "os", "source", "default_disk_gib", "min_memory_mib", "enabled"]
    list_editable = ["enabled"]
    inlines = [CacheEntryInline]
    actions = ["cache_everywhere"]

    @admin.display(description="source")
    def source(self, template):
        return f"built here ({template.recipe})" if template.recipe else template.source_url

    @admin.action(description="Cache on every enabled host now")
    def cache_everywhere(self, request, queryset):
        for template in queryset:
            for host in Host.objects.filter(enabled=True):
                entry, _ = CacheEntry.objects.get_or_create(host=host, template=template)
                enqueue_on_commit(CacheEntry.task_name, (entry.pk,), queue=host.queue)
        self.message_user(request, "Caching queued.")


@admin.register(CacheEntry)
class CacheEntryAdmin(admin.ModelAdmin):
    list_display = ["template", "host", "status", "detail", "digest", "size", "finished_at"]
    list_filter = ["status", "host"]
    readonly_fields = [f.name for f in CacheEntry._meta.fields]

    def has_add_permission(self, request):
        return False


class OperationInline(admin.TabularInline):
    model = Operation
    fields = ["kind", "status", "progress", "attempts", "last_error", "result", "created_at", "finished_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0
    ordering = ["-created_at"]


class SnapshotInline(admin.TabularInline):
    model = Snapshot
    fields = ["name", "description", "with_memory", "state", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0


class ArchiveInline(admin.TabularInline):
    model = Archive
    fields = ["created_at", "size", "sha256", "secrets_included", "consistency"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0


@admin.register(Appliance)
class ApplianceAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "template", "host", "status", "status_detail", "vcpus", "memory_mib",
                    "disk_gib", "created_at"]
    list_filter = ["status", "host", "template"]
    search_fields = ["name", "owner__display_name"]
    readonly_fields = [f.name for f in Appliance._meta.fields if f.name != "wg_private_key_sealed"]
    exclude = ["wg_private_key_sealed"]
    inlines = [SnapshotInline, ArchiveInline, OperationInline]
    actions = ["start", "shutdown", "reboot", "poweroff", "migrate_anywhere", "export", "delete_appliances"]

    def has_add_permission(self, request):
        return False  # appliances are made through the service (console or API)

    def has_delete_permission(self, request, obj=None):
        return False  # the delete action removes the VM and its files too

    def _act(self, request, queryset, kind, done):
        _each(self, request, queryset,
              lambda a: services.appliance_act(actor=request.user, appliance_id=a.pk, kind=kind), done)

    @admin.action(description="Start")
    def start(self, request, queryset):
        self._act(request, queryset, Kind.START, "Start queued")

    @admin.action(description="Shut down (ACPI, then forced)")
    def shutdown(self, request, queryset):
        self._act(request, queryset, Kind.SHUTDOWN, "Shutdown queued")

    @admin.action(description="Reboot")
    def reboot(self, request, queryset):
        self._act(request, queryset, Kind.REBOOT, "Reboot queued")

    @admin.action(description="Power off (force)")
    def poweroff(self, request, queryset):
        self._act(request, queryset, Kind.POWEROFF, "Power off queued")

    @admin.action(description="Migrate to another host with room")
    def migrate_anywhere(self, request, queryset):
        _each(self, request, queryset,
              lambda a: services.migrate_request(actor=request.user, appliance_id=a.pk, host=None), "Migration queued")

    @admin.action(description="Export an archive (without secrets)")
    def export(self, request, queryset):
        _each(self, request, queryset,
              lambda a: exports.archive_export(actor=request.user, appliance_id=a.pk), "Export queued")

    @admin.action(description="Delete appliances (VM, disk, seed and mesh peer)")
    def delete_appliances(self, request, queryset):
        _each(self, request, queryset,
              lambda a: services.appliance_delete(actor=request.user, appliance_id=a.pk), "Deletion queued")


@admin.register(Snapshot)
class SnapshotAdmin(admin.ModelAdmin):
    list_display = ["name", "appliance", "with_memory", "state", "created_at"]
    readonly_fields = ["appliance", "name", "description", "with_memory", "state", "created_at"]
    actions = ["revert", "delete_snapshots"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Revert the appliance to this snapshot")
    def revert(self, request, queryset):
        _each(self, request, queryset, lambda snap: services.snapshot_revert_request(
            actor=request.user, appliance_id=snap.appliance_id, snapshot_id=snap.pk), "Revert queued")

    @admin.action(description="Delete snapshots")
    def delete_snapshots(self, request, queryset):
        _each(self, request, queryset, lambda snap: services.snapshot_delete_request(
            actor=request.user, appliance_id=snap.appliance_id, snapshot_id=snap.pk), "Deletion queued")
