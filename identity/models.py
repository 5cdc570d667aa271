from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.auth.base_user import BaseUserManager
from django.contrib.auth.models import AbstractBaseUser, PermissionsMixin
from django.contrib.sessions.base_session import AbstractBaseSession
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from infrasim_site.steps import Step, StepStatus
from infrasim_site.visibility import OwnedQuerySet


class UserManager(BaseUserManager):
    def create_user(self, *, display_name: str, **extra) -> "User":
        user = self.model(display_name=display_name, **extra)
        user.set_unusable_password()
        user.full_clean()
        user.save(using=self._db)
        return user

    def create_superuser(self, **kwargs):
        raise NotImplementedError("Operators are created with `manage.py createoperator` and enroll a passkey.")


class User(AbstractBaseUser, PermissionsMixin):
    """An account that only ever signs in with a passkey.

    AbstractBaseUser brings a password column; it always holds Django's
    unusable marker and no form, API or admin page ever shows or sets it.
    """

    class SignupState(models.TextChoices):
        AWAITING_PASSKEY = "awaiting_passkey", "awaiting passkey"
        ACTIVE = "active", "active"

    account_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    display_name = models.CharField(max_length=64)
    is_staff = models.BooleanField(default=False, help_text="Operators: may use the admin and see every object.")
    is_active = models.BooleanField(default=True)
    signup_state = models.CharField(max_length=20, choices=SignupState.choices, default=SignupState.AWAITING_PASSKEY)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "account_id"
    REQUIRED_FIELDS = ["display_name"]

    class Meta:
        indexes = [models.Index(fields=["signup_state", "date_joined"])]

    def __str__(self) -> str:
        return self.display_name

    def get_full_name(self) -> str:
        return self.display_name

    def get_short_name(self) -> str:
        return self.display_name


class Identity(models.Model):
    """A claimed handle and what it provisions: handle.BASE_DOMAIN,
    @handle:MATRIX_DOMAIN and an S3 bucket."""

    class Status(models.TextChoices):
        RESERVED = "reserved", "reserved"
        PENDING = "pending", "provisioning queued"
        PROVISIONING = "provisioning", "provisioning"
        ACTIVE = "active", "active"
        INCOMPLETE = "incomplete", "incomplete"
        FAILED = "failed", "failed"
        CANCELLING = "cancelling", "cancelling"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="identity")
    handle = models.CharField(max_length=32, help_text="Normalised: NFKC, lower-case.")
    handle_skeleton = models.CharField(
        max_length=32, editable=False, help_text="Confusable skeleton; unique so look-alikes cannot coexist."
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RESERVED)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "identities"
        constraints = [
            models.UniqueConstraint(Lower("handle"), name="identity_handle_ci_unique"),
            models.UniqueConstraint(fields=["handle_skeleton"], name="identity_handle_skeleton_unique"),
        ]

    def __str__(self) -> str:
        return self.handle

    @property
    def subdomain(self) -> str:
        return f"{self.handle}.{settings.BASE_DOMAIN}"

    @property
    def matrix_id(self) -> str:
        return f"@{self.handle}:{settings.MATRIX_DOMAIN}"

    @property
    def bucket(self) -> str:
        return f"{settings.S3_BUCKET_PREFIX}{self.handle}"


class ProvisioningStep(Step):
    """One thing a handle provisions, with its own state, so a failed step is
    retried alone and a finished one is never redone."""

    class Kind(models.TextChoices):
        DNS = "dns", "subdomain (DNS)"
        MATRIX = "matrix", "Matrix account"
        S3 = "s3", "S3 bucket"

    # The shared step statuses, then this step's own (a TextChoices with
    # members cannot be subclassed, so it is built from StepStatus's).
    Status = models.TextChoices(
        "Status",
        [(status.name, (status.value, status.label)) for status in StepStatus]
        + [
            ("NOT_CONFIGURED", ("not_configured", "not configured")),
            ("REMOVING", ("removing", "removing")),
            ("REMOVED", ("removed", "removed")),
        ],
    )

    task_name = "identity.tasks.provision_step"

    identity = models.ForeignKey(Identity, on_delete=models.CASCADE, related_name="steps")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    detail = models.CharField(max_length=300, blank=True, help_text="What the backend reported on success.")

    class Meta:
        ordering = ["kind"]
        constraints = [models.UniqueConstraint(fields=["identity", "kind"], name="provisioning_step_unique_kind")]

    def __str__(self) -> str:
        return f"{self.identity.handle}:{self.kind}={self.status}"

    def max_attempts(self) -> int:
        return settings.PROVISIONING_MAX_ATTEMPTS

    def backoff_seconds(self) -> float:
        return settings.PROVISIONING_BACKOFF_SECONDS


class ApiTokenQuerySet(OwnedQuerySet):
    owner_field = "user"


class ApiToken(models.Model):
    """A personal API token. Only a SHA-256 of the secret is kept; the secret
    itself is shown once, when the token is created. Its scope covers
    resources (handles, peers, appliances...), never credentials: passkeys and
    tokens are managed only from a session signed in with a passkey."""

    class Scope(models.TextChoices):
        READ = "read", "read-only"
        WRITE = "write", "read-write"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=64)
    scope = models.CharField(max_length=8, choices=Scope.choices, default=Scope.READ)
    objects = ApiTokenQuerySet.as_manager()
    prefix = models.CharField(max_length=12, unique=True, help_text="Public part that identifies the token.")
    secret_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["user", "name"], name="api_token_unique_name_per_user")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def is_usable(self, now=None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class OperatorEnrollment(models.Model):
    """A one-time link that lets a person register the first passkey of a
    staff account. Single use, expires; only a hash of the token is kept."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="enrollments")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"enrollment for {self.user}"


class UserSession(AbstractBaseSession):
    """A browser session, stored under a SHA-256 of its cookie value (a copy
    of the database holds no usable session), with the account and the passkey
    it was signed in with, so deleting a passkey ends its sessions and a user
    can sign out everywhere else."""

    session_key = models.CharField("session key", max_length=64, primary_key=True, help_text="SHA-256 of the cookie value.")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="sessions"
    )
    passkey_id = models.PositiveBigIntegerField(null=True, blank=True, db_index=True)

    @classmethod
    def get_session_store_class(cls):
        from identity.sessions import SessionStore

        return SessionStore
