from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from infrasim_site import views

admin.site.site_header = "InfraSim operations"
admin.site.site_title = "InfraSim admin"

urlpatterns = [
    # The admin has no login form of its own: operators sign in with a passkey.
    path("admin/login/", views.admin_login),
    # Nobody has a password, so the admin's password pages must not exist.
    path("admin/password_change/", views.no_passwords),
    path("admin/password_change/done/", views.no_passwords),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up code as a script file: the
    # Content-Security-Policy allows no inline script.
    path(
        "api/docs/",
        SpectacularSwaggerSplitView.as_view(url_name="api-schema", template_name="api/swagger_ui.html"),
        name="api-docs",
    ),
    path("api/meshnet/mesh/", include("mesh.api.urls")),
    path("api/meshnet/", include("appliances.api.urls")),
    path("api/meshnet/", include("identity.api.urls")),
    path("api/forensics/", include("forensics.api.urls")),
    path("api/", views.ApiRootView.as_view(), name="api-root"),
    path("", include(("identity.urls", "identity"), namespace="identity")),
    path("", include(("mesh.urls", "mesh"), namespace="mesh")),
    path("", include(("appliances.urls", "appliances"), namespace="appliances")),
    path("", include(("forensics.urls", "forensics"), namespace="forensics")),
    path("", include(([path("", views.dashboard, name="dashboard")], "console"))),
    path("favicon.ico", RedirectView.as_view(url="/static/infrasim/favicon.svg")),
]
