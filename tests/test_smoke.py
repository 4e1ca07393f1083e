from tests.conftest import bearer


async def test_allowed_request_reaches_upstream(gw, issuer, upstream, http):
    async with http.get(f"{gw.url}/orders", headers=bearer(issuer.mint(scope="orders:read"))) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["headers"]["X-Auth-Subject"] == "alice"
    assert len(upstream.requests) == 1
