from django.conf import settings


def site(request):
    return {"BASE_DOMAIN": settings.BASE_DOMAIN, "MATRIX_DOMAIN": settings.MATRIX_DOMAIN}
