"""The seed's /api/meshnet/ identity endpoints. Each view parses, authorizes
and calls one service; the rules live in identity.services."""

from django.contrib.auth import logout
from django_otp_webauthn.models import WebAuthnCredential
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions as drf_exceptions
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.response import Response
from rest_framework.views import APIView

from identity import provisioning, selectors, services
from identity.api import serializers as s
from identity.serializers import identity_payload
from identity.models import ApiToken
from identity.permissions import NoTokens, PasskeySession, RecheckRequired
from identity.sessions import passkey_checked_recently, signed_in_with_passkey, start_session, take
from infrasim_site.api import Pagination
from infrasim_site.http import no_store


def _validated(serializer_class, request):
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _validated_query(serializer_class, request):
    serializer = serializer_class(data=request.query_params)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def me_payload(user) -> dict:
    return {
        "user": s.UserSerializer(user).data,
        "identity": identity_payload(selectors.identity_for(user)),
    }


REGISTRATION_KEY = "infrasim.passkey_registration"
AUTHENTICATION_KEY = "infrasim.passkey_authentication"


def _session_actor(request):
    """The signed-in account for adding a passkey: only a session that was
    signed in with a passkey and checked it recently may add another."""
    if not request.user.is_authenticated:
        return None
    if not signed_in_with_passkey(request.session):
        raise drf_exceptions.PermissionDenied("Sign in with a passkey to add another.")
    if not passkey_checked_recently(request.session):
        raise RecheckRequired()
    return request.user


class RegisterOptionsView(APIView):
    permission_classes = [permissions.AllowAny, NoTokens]
    throttle_scope = "signup"

    @extend_schema(request=s.RegistrationOptionsRequest, responses={200: OpenApiTypes.OBJECT})
    def post(self, request):
        data = _validated(s.RegistrationOptionsRequest, request)
        enrollment_token = data.get("enrollment_token")
        options, pending = services.passkey_registration_begin(
            actor=None if enrollment_token else _session_actor(request),
            display_name=data.get("display_name"),
            enrollment_token=enrollment_token,
            previous=request.session.get(REGISTRATION_KEY),
        )
        request.session[REGISTRATION_KEY] = pending
        return Response(options)


class RegisterVerifyView(APIView):
    permission_classes = [permissions.AllowAny, NoTokens]
    throttle_scope = "signup"

    @extend_schema(request=s.RegistrationResponse, responses={201: s.PasskeySerializer})
    def post(self, request):
        _validated(s.RegistrationResponse, request)
        pending = take(request.session, REGISTRATION_KEY)
        adding = bool(pending) and pending.get("purpose") == "add"
        credential = {k: v for k, v in request.data.items() if k != "passkey_name"}
        passkey, sign_in = services.passkey_registration_complete(
            pending=pending,
            actor=_session_actor(request) if adding else None,
            credential=credential,
            passkey_name=request.data.get("passkey_name"),
        )
        if sign_in:
            start_session(request, passkey.user, passkey)
        return Response(
            {"passkey": s.PasskeySerializer(passkey).data, **me_payload(passkey.user)}, status=status.HTTP_201_CREATED
        )


class LoginOptionsView(APIView):
    permission_classes = [permissions.AllowAny, NoTokens]
    throttle_scope = "login"

    @extend_schema(request=None, responses={200: OpenApiTypes.OBJECT})
    def post(self, request):
        options, state = services.passkey_authentication_begin()
        request.session[AUTHENTICATION_KEY] = state
        return Response(options)


class LoginVerifyView(APIView):
    """Signs in, or, in a session already signed in, re-checks the passkey
    (which the most sensitive actions need within the last 10 minutes)."""

    permission_classes = [permissions.AllowAny, NoTokens]
    throttle_scope = "login"

    @extend_schema(request=s.AuthenticationResponse, responses={200: s.MeSerializer})
    def post(self, request):
        _validated(s.AuthenticationResponse, request)
        user, passkey = services.passkey_authentication_complete(
            state=take(request.session, AUTHENTICATION_KEY), credential=dict(request.data)
        )
        start_session(request, user, passkey)
        return Response(me_payload(user))


class LogoutView(APIView):
    @extend_schema(request=None, responses={204: None})
    def post(self, request):
        logout(request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeView(APIView):
    @extend_schema(responses={200: s.MeSerializer})
    def get(self, request):
        return Response(me_payload(request.user))


class IdentityView(APIView):
    throttle_scope = "provisioning"
    @extend_schema(request=s.ClaimHandleRequest, responses={201: s.IdentitySerializer})
    def post(self, request):
        data = _validated(s.ClaimHandleRequest, request)
        identity = provisioning.identity_claim(actor=request.user, handle=data["handle"])
        return Response(identity_payload(identity), status=status.HTTP_201_CREATED)


class IdentityProvisionView(APIView):
    throttle_scope = "provisioning"
    @extend_schema(request=None, responses={202: s.IdentitySerializer})
    def post(self, request):
        identity = provisioning.identity_start_provisioning(actor=request.user)
        return Response(identity_payload(identity), status=status.HTTP_202_ACCEPTED)


class IdentityAvailabilityView(APIView):
    throttle_scope = "availability"
    @extend_schema(
        parameters=[OpenApiParameter("handle", str, required=True, description="The handle to check.")],
        responses={200: s.AvailabilitySerializer},
    )
    def get(self, request):
        data = _validated_query(s.AvailabilityRequest, request)
        return Response(provisioning.identity_availability(handle=data["handle"]))


class IdentityCancelView(APIView):
    throttle_scope = "provisioning"
    @extend_schema(request=None, responses={202: s.IdentitySerializer})
    def post(self, request):
        identity = provisioning.identity_cancel(actor=request.user)
        return Response(identity_payload(identity), status=status.HTTP_202_ACCEPTED)


class PasskeyViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.UpdateModelMixin, mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = s.PasskeySerializer
    pagination_class = Pagination
    http_method_names = ["get", "patch", "delete", "head", "options"]
    permission_classes = [permissions.IsAuthenticated, PasskeySession]
    recent_passkey_actions = {"destroy"}

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no user, just the model
            return WebAuthnCredential.objects.none()
        return selectors.passkeys_for(self.request.user)

    def perform_update(self, serializer):
        serializer.instance = services.passkey_rename(
            actor=self.request.user, passkey_id=serializer.instance.pk, name=serializer.validated_data.get("name", "")
        )

    def perform_destroy(self, instance):
        services.passkey_delete(actor=self.request.user, passkey_id=instance.pk)


class ApiTokenViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = s.ApiTokenSerializer
    pagination_class = Pagination
    permission_classes = [permissions.IsAuthenticated, PasskeySession]
    recent_passkey_actions = {"create"}
    throttle_scope = "token_create"
    throttle_methods = {"POST"}

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ApiToken.objects.none()
        return selectors.api_tokens_for(self.request.user)

    @extend_schema(responses={201: s.ApiTokenCreated})
    def create(self, request, *args, **kwargs):
        data = _validated(s.ApiTokenSerializer, request)
        token, secret = services.api_token_create(
            actor=request.user, name=data["name"], scope=data.get("scope", ApiToken.Scope.READ), expires_at=data.get("expires_at")
        )
        return no_store(
            Response({**s.ApiTokenSerializer(token).data, "token": secret}, status=status.HTTP_201_CREATED)
        )

    def destroy(self, request, *args, **kwargs):
        token = self.get_object()
        services.api_token_revoke(actor=request.user, token_id=token.pk)
        return Response(status=status.HTTP_204_NO_CONTENT)
