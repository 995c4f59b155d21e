"""The simulated API Manager: APIs, applications, subscriptions and users.

The catalog is what an APIM 2.6 publisher/store would hold: published APIs
(one entry per version), applications with their consumer keys, the
subscriptions between them with a subscription tier, and the users who call
through the applications. Traffic, tokens and the ground truth are all derived
from it, so it must be *exactly* reproducible: everything is drawn from one
``random.Random(seed)`` in a fixed order (never the global RNG, never
``uuid4()``), and ``build_catalog(seed=s)`` returns equal catalogs in any
process.
"""

from __future__ import annotations

import random
import string
import uuid
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import accumulate

from simulator.config import DEFAULT_PROFILE, SimulationProfile, Weighted

#: WSO2 default subscription (business plan) tiers, requests per minute
#: (docs/wso2-analytics.md section 4.1); ``None`` is unlimited.
TIERS: Mapping[str, int | None] = {"Gold": 5000, "Silver": 2000, "Bronze": 1000, "Unlimited": None,
                                   "Unauthenticated": 500}
#: WSO2 default application ("per token quota") tiers, requests per minute.
APPLICATION_TIERS: Mapping[str, int | None] = {"50PerMin": 50, "20PerMin": 20, "10PerMin": 10, "Unlimited": None}
UNAUTHENTICATED_TIER = "Unauthenticated"
ANONYMOUS = "anonymous"
CREDENTIAL_JWT = "JWT"
CREDENTIAL_OPAQUE = "OPAQUE"

_ALNUM = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Api:
    """One published API version, as the IstioExecutor exposed it through Istio.

    ``hostname`` is what clients put in ``Host`` (``request.host``);
    ``destination`` is the Kubernetes service the version is routed to
    (``destination.service.host``): the same for single-version APIs, one
    service per version otherwise.
    """

    name: str
    version: str
    context: str
    resources: tuple[tuple[str, str], ...]
    creator: str
    creator_tenant_domain: str
    hostname: str
    destination: str
    protocol: str
    popularity: float
    api_id: str

    @property
    def key(self) -> tuple[str, str]:
        """(name, version): how subscriptions and JWT claims name an API."""
        return (self.name, self.version)


@dataclass(frozen=True)
class User:
    """An end user; ``ip`` is the raw address (4 or 16 bytes) they call from."""

    name: str
    tenant_domain: str
    ip: bytes


@dataclass(frozen=True)
class Application:
    """An APIM application with one key (PRODUCTION or SANDBOX) and its subscriptions.

    ``subscriptions`` maps (api name, version) to the subscription tier, in
    subscription order; treat it as read-only. ``users`` are the end users who
    hold tokens for this application (the owner first), ``activity`` its
    relative traffic weight.
    """

    id: str
    name: str
    owner: str
    tenant_domain: str
    consumer_key: str
    consumer_secret: str = field(repr=False)
    key_type: str
    tier: str
    credential: str
    subscriptions: Mapping[tuple[str, str], str] = field(hash=False)
    users: tuple[str, ...]
    activity: float


@dataclass(frozen=True)
class Catalog:
    """Everything the simulated API Manager knows, built by :func:`build_catalog`."""

    seed: int
    apis: tuple[Api, ...]
    applications: tuple[Application, ...]
    users: tuple[User, ...]

    @cached_property
    def _api_index(self) -> dict[tuple[str, str], Api]:
        return {a.key: a for a in self.apis}

    @cached_property
    def _user_index(self) -> dict[str, User]:
        return {u.name: u for u in self.users}

    @cached_property
    def _subscribers(self) -> dict[tuple[str, str], tuple[tuple[Application, str], ...]]:
        out: dict[tuple[str, str], list[tuple[Application, str]]] = {a.key: [] for a in self.apis}
        for app in self.applications:
            for key, tier in app.subscriptions.items():
                out[key].append((app, tier))
        return {k: tuple(v) for k, v in out.items()}

    def api(self, name: str, version: str) -> Api:
        """The API entry for (name, version); raises KeyError when unknown."""
        return self._api_index[(name, version)]

    def user(self, name: str) -> User:
        """The user called ``name``; raises KeyError when unknown."""
        return self._user_index[name]

    def subscribers(self, api: Api) -> tuple[tuple[Application, str], ...]:
        """(application, subscription tier) pairs subscribed to ``api``, in catalog order."""
        return self._subscribers[api.key]


def _uuid(rng: random.Random) -> str:
    """A version-4-shaped UUID drawn from ``rng`` (reproducible, unlike ``uuid4()``)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _pick(rng: random.Random, weighted: Weighted) -> str:
    names = [n for n, _ in weighted]
    cum = list(accumulate(w for _, w in weighted))
    return names[bisect_right(cum, rng.random() * cum[-1])]


def _sample_weighted(rng: random.Random, items: Sequence[int], weights: Sequence[float], k: int) -> list[int]:
    """``k`` distinct items, each draw proportional to weight (popular APIs get more subscribers)."""
    pool, w = list(items), list(weights)
    chosen: list[int] = []
    for _ in range(min(k, len(pool))):
        cum = list(accumulate(w))
        i = min(bisect_right(cum, rng.random() * cum[-1]), len(pool) - 1)
        chosen.append(pool.pop(i))
        w.pop(i)
    return chosen


def _zipf(rank: int, exponent: float) -> float:
    return 1.0 / (rank + 1) ** exponent


def _resources(rng: random.Random, specs: Sequence[str], profile: SimulationProfile) -> tuple[tuple[str, str], ...]:
    """Expand resource specs into (method, URI template) pairs, APIM style."""
    optional = dict(profile.optional_methods)
    out: list[tuple[str, str]] = []
    for spec in specs:
        path = "/" + spec
        head, _, last = path.rpartition("/")
        if last.startswith("{") and last.endswith("}"):
            out.append(("GET", head))
            if rng.random() < optional["POST"]:
                out.append(("POST", head))
            out.append(("GET", path))
            for method in ("PUT", "PATCH", "DELETE"):
                if rng.random() < optional[method]:
                    out.append((method, path))
        else:
            out.append(("GET", path))
    return tuple(out)


def _slug(name: str) -> str:
    base = name[:-3] if name.endswith("API") and len(name) > 3 else name
    return base.lower()


def _build_apis(rng: random.Random, count: int, profile: SimulationProfile) -> list[Api]:
    specs = list(profile.api_specs)
    rng.shuffle(specs)
    creators = dict(profile.api_creators)
    entries: list[tuple[str, str, tuple[str, ...], bool]] = []  # name, version, specs, multi-version
    round_no = 0
    while len(entries) < count:
        for name, resource_specs in specs:
            if len(entries) >= count:
                break
            if round_no:  # the name pool is exhausted: PizzaShack2API, ...
                name = f"{name[:-3]}{round_no + 1}API" if name.endswith("API") else f"{name}{round_no + 1}"
            if count - len(entries) >= 2 and rng.random() < profile.two_version_share:
                pair = profile.version_pairs[int(rng.random() * len(profile.version_pairs))]
                entries.extend((name, v, resource_specs, True) for v in pair)
            else:
                entries.append((name, _pick(rng, profile.single_versions), resource_specs, False))
        round_no += 1

    ranks = list(range(len(entries)))
    rng.shuffle(ranks)
    apis: list[Api] = []
    base_attrs: dict[str, tuple[str, str, str]] = {}
    for (name, version, resource_specs, multi), rank in zip(entries, ranks, strict=True):
        if name not in base_attrs:  # both versions share publisher, tenant and protocol
            tenant = _pick(rng, profile.api_tenants)
            people = creators[tenant]
            base_attrs[name] = (people[int(rng.random() * len(people))], tenant, _pick(rng, profile.api_protocols))
        creator, tenant, protocol = base_attrs[name]
        slug = _slug(name)
        hostname = f"{slug}.{profile.service_namespace}.svc.cluster.local"
        if multi:
            major = version.lstrip("v").split(".")[0]
            destination = f"{slug}-v{major}.{profile.service_namespace}.svc.cluster.local"
        else:
            destination = hostname
        apis.append(Api(
            name=name,
            version=version,
            context=f"/{slug}/{version}",
            resources=_resources(rng, resource_specs, profile),
            creator=creator,
            creator_tenant_domain=tenant,
            hostname=hostname,
            destination=destination,
            protocol=protocol,
            popularity=_zipf(rank, profile.api_popularity_exponent),
            api_id=_uuid(rng),
        ))
    return apis


def _ip(rng: random.Random, profile: SimulationProfile) -> bytes:
    """A client address: IPv6 from the 2001:db8::/32 documentation prefix, or an IPv4
    whose first octet is not a private (10, 172, 192) or loopback (127) block."""
    if rng.random() < profile.ipv6_share:
        return bytes((0x20, 0x01, 0x0D, 0xB8)) + rng.getrandbits(96).to_bytes(12, "big")
    first = rng.choice([o for o in range(1, 224) if o not in (10, 127, 172, 192)])
    return bytes((first,)) + rng.getrandbits(24).to_bytes(3, "big")


def _build_users(rng: random.Random, count: int, profile: SimulationProfile) -> list[User]:
    users = []
    for n in range(1, count + 1):
        tenant = _pick(rng, profile.user_tenants)
        users.append(User(name=f"user{n}@{tenant}", tenant_domain=tenant, ip=_ip(rng, profile)))
    return users


def _build_applications(rng: random.Random, count: int, apis: Sequence[Api], users: Sequence[User],
                        profile: SimulationProfile) -> list[Application]:
    by_tenant: dict[str, list[User]] = {}
    for u in users:
        by_tenant.setdefault(u.tenant_domain, []).append(u)
    activity_ranks = list(range(count))
    rng.shuffle(activity_ranks)
    api_indexes = list(range(len(apis)))
    popularity = [a.popularity for a in apis]
    sub_counts = list(range(1, len(profile.subscriptions_per_application) + 1))
    user_counts = list(range(1, len(profile.users_per_application) + 1))
    seen_names: dict[str, int] = {}
    apps: list[Application] = []
    for i in range(count):
        owner = users[int(rng.random() * len(users))]
        base_name = (profile.application_name_prefixes[int(rng.random() * len(profile.application_name_prefixes))]
                     + profile.application_name_suffixes[int(rng.random() * len(profile.application_name_suffixes))])
        seen_names[base_name] = seen_names.get(base_name, 0) + 1
        name = base_name if seen_names[base_name] == 1 else f"{base_name}{seen_names[base_name]}"
        n_subs = _sample_weighted(rng, sub_counts, profile.subscriptions_per_application, 1)[0]
        subscribed = _sample_weighted(rng, api_indexes, popularity, n_subs)
        subscriptions = {apis[j].key: _pick(rng, profile.subscription_tiers) for j in subscribed}
        n_users = _sample_weighted(rng, user_counts, profile.users_per_application, 1)[0]
        peers = [u for u in by_tenant[owner.tenant_domain] if u is not owner]
        others = rng.sample(peers, min(n_users - 1, len(peers)))
        apps.append(Application(
            id=_uuid(rng),
            name=name,
            owner=owner.name,
            tenant_domain=owner.tenant_domain,
            consumer_key="".join(rng.choices(_ALNUM, k=profile.consumer_key_length)),
            consumer_secret="".join(rng.choices(_ALNUM, k=profile.consumer_key_length)),
            key_type="SANDBOX" if rng.random() < profile.sandbox_share else "PRODUCTION",
            tier=_pick(rng, profile.application_tiers),
            credential=CREDENTIAL_OPAQUE if rng.random() < profile.opaque_share else CREDENTIAL_JWT,
            subscriptions=subscriptions,
            users=(owner.name, *(u.name for u in others)),
            activity=_zipf(activity_ranks[i], profile.application_activity_exponent),
        ))
    return apps


def build_catalog(seed: int = 7, apis: int = 20, applications: int = 200, users: int = 500,
                  *, profile: SimulationProfile = DEFAULT_PROFILE) -> Catalog:
    """Build the simulated API Manager catalog.

    Args:
        seed: the only source of randomness; equal seeds give equal catalogs.
        apis: exact number of :class:`Api` entries (a two-version API counts twice).
        applications: exact number of applications.
        users: exact number of users.
        profile: the simulated deployment's shape.

    Returns:
        The catalog. Every application subscribes to 1-6 APIs (fewer if the
        catalog has fewer), chosen with probability proportional to popularity.

    Raises:
        ValueError: a count is not positive.

    Example:
        >>> c = build_catalog(seed=1, apis=3, applications=4, users=5)
        >>> (len(c.apis), len(c.applications), len(c.users))
        (3, 4, 5)
    """
    if apis < 1 or applications < 1 or users < 1:
        raise ValueError(f"catalog sizes must be positive, got apis={apis}, applications={applications}, "
                         f"users={users}")
    rng = random.Random(seed)
    api_list = _build_apis(rng, apis, profile)
    user_list = _build_users(rng, users, profile)
    app_list = _build_applications(rng, applications, api_list, user_list, profile)
    return Catalog(seed=seed, apis=tuple(api_list), applications=tuple(app_list), users=tuple(user_list))
