from django.contrib import admin

from forensics.models import LedgerEntry


@admin.register(LedgerEntry)
class LedgerEntryAdmin(admin.ModelAdmin):
    """Read-only: the database refuses changes to the ledger anyway."""

    list_display = ["id", "recorded_at", "kind", "actor", "subject", "leaf_version"]
    list_filter = ["kind", "leaf_version"]
    search_fields = ["kind", "actor", "subject"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
