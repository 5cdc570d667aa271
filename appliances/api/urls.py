from django.urls import path
from rest_framework.routers import SimpleRouter

from appliances.api import views

router = SimpleRouter(trailing_slash=False)
router.register("templates", views.TemplateViewSet, basename="template")
router.register("appliances", views.ApplianceViewSet, basename="appliance")

urlpatterns = [
    path("appliances/<int:pk>/phone-home/<str:token>", views.PhoneHomeView.as_view(), name="appliance-phone-home"),
    *router.urls,
]
