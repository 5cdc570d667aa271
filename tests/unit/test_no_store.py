from django.http import HttpResponse

from infrasim_site.http import no_store


def test_no_store_keeps_a_secret_out_of_every_cache():
    response = no_store(HttpResponse("secret"))
    directives = {d.strip() for d in response["Cache-Control"].split(",")}
    assert {"no-store", "private"} <= directives
