"""core.api_catalog: OpenAPI documents in, (API, version, template, method) out, as a gateway routes."""

from __future__ import annotations

import pytest

from core.api_catalog import ApiCatalog, ApiDefinition, CatalogError, Resource, parse_openapi


def doc(**over) -> dict:
    base = {"openapi": "3.0.3", "info": {"title": "Cart", "version": "2.0.0"},
            "servers": [{"url": "https://gw.example.com/cart"}],
            "paths": {"/items": {"get": {}, "post": {}}, "/items/{itemId}": {"get": {}, "delete": {}},
                      "/items/summary": {"get": {}}, "/": {"get": {}}}}
    base.update(over)
    return base


def test_an_openapi_document_gives_name_version_context_and_resources() -> None:
    api = parse_openapi(doc(), "cart.yaml")
    assert (api.name, api.version, api.context, api.hostnames, api.source) == \
        ("Cart", "2.0.0", "/cart", (), "cart.yaml")
    assert sorted((r.method, r.template) for r in api.resources) == [
        ("DELETE", "/items/{itemId}"), ("GET", "/"), ("GET", "/items"), ("GET", "/items/summary"),
        ("GET", "/items/{itemId}"), ("POST", "/items")]


def test_extensions_win_over_the_server_url_and_31_and_numeric_versions_are_accepted() -> None:
    api = parse_openapi(doc(openapi="3.1.0", info={"title": "Cart", "version": 2.0},
                            **{"x-apim-context": "/shop/cart/", "x-apim-hostnames": ["Shop.Example.com"]}), "c.json")
    assert (api.version, api.context, api.hostnames) == ("2.0", "/shop/cart", ("shop.example.com",))


@pytest.mark.parametrize(("document", "pointer"), [
    ([], "#: is not an OpenAPI document"),
    (doc(openapi="2.0"), "#/openapi:"),
    (doc(info={"version": "1"}), "#/info/title:"),
    (doc(info={"title": "Cart", "version": ""}), "#/info/version:"),
    (doc(servers=[]), "#/servers/0/url:"),
    (doc(**{"x-apim-context": "cart"}), "#/x-apim-context:"),
    (doc(**{"x-apim-context": "/"}), "#/x-apim-context:"),
    (doc(paths=None), "#/paths:"),
    (doc(paths={"items": {"get": {}}}), "#/paths/items:"),
    (doc(paths={"/a/b": {"get": "x"}}), "#/paths/~1a~1b/get:"),
    (doc(**{"x-apim-hostnames": "a.example.com"}), "#/x-apim-hostnames:"),
])
def test_a_malformed_document_is_refused_with_the_file_and_json_pointer(document, pointer: str) -> None:
    with pytest.raises(CatalogError) as raised:
        parse_openapi(document, "bad.yaml")
    assert raised.value.one_line().startswith("bad.yaml" + pointer)
    assert raised.value.usage


def catalog() -> ApiCatalog:
    return ApiCatalog([
        parse_openapi(doc(), "cart-2.yaml"),
        parse_openapi(doc(info={"title": "Cart", "version": "1.0.0"}), "cart-1.yaml"),
        parse_openapi(doc(info={"title": "CartAdmin", "version": "1.0.0"}, **{"x-apim-context": "/cart/admin"},
                          paths={"/users": {"get": {}}}), "admin.yaml"),
        ApiDefinition("Pay", "v3", "/pay/{version}", ("pay.example.com",), (Resource("POST", "/charges"),)),
    ])


@pytest.mark.parametrize(("authority", "method", "path", "expected"), [
    ("gw.example.com", "GET", "/cart/2.0.0/items/17", ("Cart", "2.0.0", "/items/{itemId}")),
    ("gw.example.com:443", "get", "/cart/1.0.0/items?limit=5", ("Cart", "1.0.0", "/items")),
    ("gw", "GET", "/cart/2.0.0/items/summary", ("Cart", "2.0.0", "/items/summary")),  # literal beats {itemId}
    ("gw", "DELETE", "/cart/2.0.0/items/summary", ("Cart", "2.0.0", "/items/{itemId}")),
    ("gw", "GET", "/cart/2.0.0/", ("Cart", "2.0.0", "/")),
    ("gw", "PATCH", "/cart/2.0.0/items/17", ("Cart", "2.0.0", "")),  # the API, no template for the method
    ("gw", "GET", "/cart/admin/1.0.0/users", ("CartAdmin", "1.0.0", "/users")),  # longest context wins
    ("pay.example.com", "POST", "/pay/v3/charges", ("Pay", "v3", "/charges")),  # {version} inside the context
    ("PAY.example.com:8443", "POST", "/pay/v3/charges#x", ("Pay", "v3", "/charges")),
    ("other.example.com", "POST", "/pay/v3/charges", None),  # not served on that host
    ("gw", "GET", "/cart/9.9.9/items", None),  # no such version
    ("gw", "GET", "/cart", None),
    ("gw", "GET", "/Cart/2.0.0/items", None),  # paths are case-sensitive
    ("gw", "GET", "/", None),
    ("gw", "GET", "", None),
])
def test_requests_match_like_a_gateway_routes(authority: str, method: str, path: str, expected) -> None:
    found = catalog().match(authority, path, method)
    assert (None if found is None else (found.api.name, found.api.version, found.resource_template)) == expected


def test_apis_a_gateway_could_not_route_apart_are_refused() -> None:
    from core.api_catalog import check_loadable

    cart = parse_openapi(doc(), "a.yaml")
    with pytest.raises(CatalogError, match=r"b.yaml: API Cart 2.0.0 is also defined in a.yaml"):
        check_loadable([cart, parse_openapi(doc(), "b.yaml")])
    clash = parse_openapi(doc(info={"title": "Basket", "version": "2.0.0"}), "c.yaml")
    with pytest.raises(CatalogError, match=r"both routed at /cart/2.0.0"):
        check_loadable([cart, clash])
    inside = ApiDefinition("Basket", "2.0.0", "/cart/{version}")
    with pytest.raises(CatalogError, match=r"both routed at /cart/2.0.0"):
        check_loadable([cart, inside])
    elsewhere = ApiDefinition("Basket", "2.0.0", "/cart", ("b.example.com",))
    check_loadable([ApiDefinition("Cart", "2.0.0", "/cart", ("a.example.com",)), elsewhere])  # other hosts
    check_loadable([cart, parse_openapi(doc(info={"title": "Cart", "version": "3.0.0"}), "d.yaml")])


def test_a_context_with_the_version_written_out_matches_and_gives_the_path_below_it() -> None:
    pizza = ApiDefinition("PizzaShackAPI", "1.0.0", "/pizzashack/1.0.0", (),
                          (Resource("GET", "/menu"), Resource("GET", "/order/{orderId}")))
    found = ApiCatalog([pizza]).match("gw", "/pizzashack/1.0.0/order/42?x=1", "GET")
    assert found is not None
    assert (found.api.name, found.resource_template, found.resource_path) == \
        ("PizzaShackAPI", "/order/{orderId}", "/order/42")
    assert ApiCatalog([pizza]).match("gw", "/pizzashack/menu", "GET") is None
    from core.api_catalog import check_loadable

    with pytest.raises(CatalogError, match=r"both routed at /pizzashack/1.0.0"):
        check_loadable([pizza, ApiDefinition("Other", "1.0.0", "/pizzashack")])


def test_tcp_clusters_name_one_api_each() -> None:
    from core.api_catalog import check_loadable

    db = parse_openapi(doc(**{"x-apim-tcp-clusters": ["outbound|5432||pg.db.svc.cluster.local",
                                                      "outbound|5432||pg.db.svc.cluster.local"]}), "db.yaml")
    assert db.tcp_clusters == ("outbound|5432||pg.db.svc.cluster.local",)
    found = ApiCatalog([db]).match_cluster("outbound|5432||pg.db.svc.cluster.local")
    assert found is not None and (found.name, found.version) == ("Cart", "2.0.0")
    assert ApiCatalog([db]).match_cluster("outbound|80||other") is None
    other = parse_openapi(doc(info={"title": "Other", "version": "1"},
                              **{"x-apim-tcp-clusters": list(db.tcp_clusters)}), "o.yaml")
    with pytest.raises(CatalogError, match=r"o.yaml: TCP cluster outbound\|5432\|\|pg.db.svc.cluster.local is "
                                           r"claimed by API Other 1 and by Cart 2.0.0 \(db.yaml\)"):
        check_loadable([db, other])
    with pytest.raises(CatalogError, match=r"#/x-apim-tcp-clusters:"):
        parse_openapi(doc(**{"x-apim-tcp-clusters": "outbound|5432||pg"}), "bad.yaml")
