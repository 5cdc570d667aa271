from django.urls import path
from rest_framework.routers import SimpleRouter

from identity.api import views

router = SimpleRouter(trailing_slash=False)
router.register("passkeys", views.PasskeyViewSet, basename="passkey")
router.register("tokens", views.ApiTokenViewSet, basename="api-token")

urlpatterns = [
    path("auth/register/options", views.RegisterOptionsView.as_view(), name="auth-register-options"),
    path("auth/register/verify", views.RegisterVerifyView.as_view(), name="auth-register-verify"),
    path("auth/login/options", views.LoginOptionsView.as_view(), name="auth-login-options"),
    path("auth/login/verify", views.LoginVerifyView.as_view(), name="auth-login-verify"),
    path("auth/logout", views.LogoutView.as_view(), name="auth-logout"),
    path("me", views.MeView.as_view(), name="me"),
    path("identity", views.IdentityView.as_view(), name="identity"),
    path("identity/provision", views.IdentityProvisionView.as_view(), name="identity-provision"),
    path("identity/availability", views.IdentityAvailabilityView.as_view(), name="identity-availability"),
    path("identity/cancel", views.IdentityCancelView.as_view(), name="identity-cancel"),
    *router.urls,
]
