"""Every default of the simulator, in two frozen dataclasses.

* :class:`SimulationProfile` describes the *world* being simulated: which APIs
  exist, how popular they are, how clients authenticate, the response-code mix,
  latency and size distributions, and how the shipped ``wso2-handler`` was
  configured. Change it to model a different deployment.
* :class:`SimulationConfig` describes one *run*: where to send, how fast, how
  long, which seed, how to batch. Its fields double as the
  ``apim-analytics simulate`` flags and ``APIM_SIM_*`` environment variables.

No other simulator module hard-codes a tunable number or name; they all read
these two classes, so a reviewer can see the whole model on one page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.settings import SettingsError, setting

Weighted = tuple[tuple[str, float], ...]
WeightedCodes = tuple[tuple[int, float], ...]

#: Where the CLI writes the ground truth unless told otherwise.
DEFAULT_GROUND_TRUTH_FILE = "simulated-ground-truth.csv"


@dataclass(frozen=True)
class SimulationProfile:
    """The simulated deployment: catalog shape, client behaviour and traffic mix.

    The defaults model a mid-size WSO2 API Manager 2.6 tenant fronting Istio
    services (docs/wso2-analytics.md sections 1.2 and 4.1): a few dozen APIs with a Zipf-like
    popularity skew, applications that mostly use JWT access tokens, and the
    response-code, latency and size shape typical of JSON REST traffic.
    """

    # --- APIs -------------------------------------------------------------
    #: (API name, resource specs). A spec ending in ``/{param}`` yields a
    #: collection (GET, maybe POST) plus an item (GET, maybe PUT/PATCH/DELETE);
    #: any other spec is a read-only GET resource.
    api_specs: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("PizzaShackAPI", ("orders/{orderId}", "menu")),
        ("PaymentsAPI", ("payments/{paymentId}", "refunds/{refundId}")),
        ("CustomersAPI", ("customers/{customerId}", "customers/{customerId}/addresses/{addressId}")),
        ("OrdersAPI", ("orders/{orderId}", "orders/{orderId}/items")),
        ("InventoryAPI", ("items/{itemId}", "warehouses/{warehouseId}")),
        ("ShippingAPI", ("shipments/{shipmentId}", "rates")),
        ("CatalogAPI", ("products/{productId}", "categories/{categoryId}")),
        ("AccountsAPI", ("accounts/{accountId}", "accounts/{accountId}/transactions")),
        ("NotificationsAPI", ("notifications/{notificationId}", "subscriptions/{subscriptionId}")),
        ("WeatherAPI", ("forecast", "current", "alerts")),
        ("StockQuoteAPI", ("quotes/{symbol}", "markets")),
        ("BookingAPI", ("bookings/{bookingId}", "availability")),
        ("LoyaltyAPI", ("members/{memberId}", "rewards")),
        ("ReviewsAPI", ("reviews/{reviewId}", "products/{productId}/reviews")),
        ("SearchAPI", ("search", "suggest")),
        ("CartAPI", ("carts/{cartId}", "carts/{cartId}/items/{itemId}")),
        ("InvoicesAPI", ("invoices/{invoiceId}", "invoices/{invoiceId}/lines")),
        ("UsersAPI", ("users/{userId}", "users/{userId}/preferences")),
        ("FlightsAPI", ("flights/{flightId}", "airports")),
        ("HotelsAPI", ("hotels/{hotelId}", "hotels/{hotelId}/rooms/{roomId}")),
        ("DeliveryAPI", ("deliveries/{deliveryId}", "drivers/{driverId}")),
        ("FraudCheckAPI", ("checks/{checkId}", "rules")),
        ("CurrencyAPI", ("rates", "conversions/{conversionId}")),
        ("GeoLocationAPI", ("geocode", "places/{placeId}")),
        ("PatientRecordsAPI", ("patients/{patientId}", "patients/{patientId}/appointments/{appointmentId}")),
        ("ClaimsAPI", ("claims/{claimId}", "claims/{claimId}/documents")),
        ("PhoneVerifyAPI", ("verifications/{verificationId}", "countries")),
        ("MusicAPI", ("tracks/{trackId}", "playlists/{playlistId}")),
        ("NewsAPI", ("articles/{articleId}", "headlines")),
        ("RecommendationsAPI", ("recommendations", "feedback/{feedbackId}")),
        ("LoansAPI", ("applications/{applicationId}", "offers")),
        ("TicketsAPI", ("tickets/{ticketId}", "tickets/{ticketId}/comments")),
    )
    #: Version of an API published once.
    single_versions: Weighted = (("1.0.0", 0.6), ("v1", 0.25), ("1.0", 0.15))
    #: Share of API names published in two versions (each its own Api entry).
    two_version_share: float = 0.25
    version_pairs: tuple[tuple[str, str], ...] = (("1.0.0", "2.0.0"), ("v1", "v2"))
    #: Probability that a resource offers each optional method.
    optional_methods: Weighted = (("POST", 0.75), ("PUT", 0.5), ("PATCH", 0.15), ("DELETE", 0.35))
    #: Relative call volume per method (GET-heavy, like most REST APIs).
    method_weights: Weighted = (("GET", 10.0), ("POST", 2.5), ("PUT", 1.0), ("PATCH", 0.4), ("DELETE", 0.5))
    api_tenants: Weighted = (("carbon.super", 0.85), ("acme.com", 0.15))
    api_creators: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("carbon.super", ("admin", "publisher", "apicreator")),
        ("acme.com", ("admin@acme.com", "publisher@acme.com")),
    )
    #: Kubernetes namespace of the backing services (IstioExecutor only bound ``default``).
    service_namespace: str = "default"
    api_protocols: Weighted = (("http", 0.8), ("https", 0.2))
    #: Zipf exponent of API popularity (weight = 1 / rank**s).
    api_popularity_exponent: float = 1.1

    # --- users and applications -------------------------------------------
    user_tenants: Weighted = (("carbon.super", 0.9), ("acme.com", 0.1))
    ipv6_share: float = 0.12
    application_name_prefixes: tuple[str, ...] = (
        "Mobile", "Web", "Partner", "Internal", "Kiosk", "POS", "Analytics", "Billing", "Customer", "Driver",
        "Store", "Checkout", "Backoffice", "Smart", "Field",
    )
    application_name_suffixes: tuple[str, ...] = ("App", "Portal", "Client", "Service", "Dashboard", "Integration")
    sandbox_share: float = 0.15
    opaque_share: float = 0.10
    application_tiers: Weighted = (("50PerMin", 0.3), ("20PerMin", 0.2), ("10PerMin", 0.15), ("Unlimited", 0.35))
    subscription_tiers: Weighted = (("Gold", 0.2), ("Silver", 0.3), ("Bronze", 0.3), ("Unlimited", 0.2))
    #: Weights of subscribing to 1, 2, ... APIs.
    subscriptions_per_application: tuple[float, ...] = (0.25, 0.25, 0.2, 0.12, 0.1, 0.08)
    #: Weights of an application having 1, 2, ... end users (owner included).
    users_per_application: tuple[float, ...] = (30, 20, 12, 9, 7, 6, 5, 4, 3, 2, 1, 1)
    application_activity_exponent: float = 0.9
    user_activity_exponent: float = 1.0
    consumer_key_length: int = 28

    # --- tokens -----------------------------------------------------------
    token_issuer: str = "https://apim.example.com/oauth2/token"
    #: APIM's default access-token validity.
    token_validity_s: int = 3600
    #: Tokens are issued this long before the simulated traffic starts.
    token_issued_before_start_s: int = 300
    #: Tokens stay valid at least this long after the simulated traffic ends.
    token_expiry_margin_s: int = 300

    # --- traffic ----------------------------------------------------------
    anonymous_share: float = 0.03
    status_class_shares: Weighted = (("2xx", 0.88), ("3xx", 0.02), ("4xx", 0.08), ("5xx", 0.02))
    #: 2xx codes per method; other methods use GET's.
    success_codes: tuple[tuple[str, WeightedCodes], ...] = (
        ("GET", ((200, 0.97), (204, 0.03))),
        ("POST", ((201, 0.85), (200, 0.15))),
        ("PUT", ((200, 0.7), (204, 0.3))),
        ("PATCH", ((200, 0.8), (204, 0.2))),
        ("DELETE", ((204, 0.8), (200, 0.2))),
    )
    redirect_codes: WeightedCodes = ((301, 0.15), (302, 0.25), (304, 0.6))
    client_error_codes: WeightedCodes = ((400, 0.2), (401, 0.2), (403, 0.1), (404, 0.35), (429, 0.15))
    server_error_codes: WeightedCodes = ((500, 0.35), (502, 0.2), (503, 0.3), (504, 0.15))
    #: Codes the gateway/adapter answers itself: no backend time.
    gateway_rejected_codes: tuple[int, ...] = (401, 403, 429)
    #: Codes where the upstream fails fast (connection refused, overload).
    fast_failure_codes: tuple[int, ...] = (502, 503)
    #: Codes that mean the upstream timed out ...
    upstream_timeout_codes: tuple[int, ...] = (504,)
    #: ... after Envoy's default route timeout.
    upstream_timeout_ms: int = 15000
    #: Codes whose response has no body.
    empty_body_codes: tuple[int, ...] = (204, 304)
    backend_latency_median_ms: float = 23.0
    backend_latency_sigma: float = 0.9
    fast_failure_latency_median_ms: float = 3.0
    fast_failure_latency_sigma: float = 0.6
    #: The gateway's own share of the response time (security check, routing).
    gateway_latency_median_ms: float = 1.5
    gateway_latency_sigma: float = 0.5
    body_methods: tuple[str, ...] = ("POST", "PUT", "PATCH")
    #: Share of GET/DELETE requests that still carry a small body.
    bodyless_method_body_share: float = 0.02
    bodyless_method_body_median: float = 64.0
    request_size_median: float = 512.0
    request_size_sigma: float = 1.0
    response_size_median: float = 1400.0
    response_size_sigma: float = 1.1
    error_response_size_median: float = 120.0
    error_response_size_sigma: float = 0.4
    #: Path parameters are drawn from 1..path_id_max.
    path_id_max: int = 99999
    user_agents: Weighted = (
        (("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/74.0.3729.131 Safari/537.36"), 0.28),
        (("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/12.1 Safari/605.1.15"), 0.12),
        ("Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:66.0) Gecko/20100101 Firefox/66.0", 0.08),
        (("Mozilla/5.0 (iPhone; CPU iPhone OS 12_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/12.1 Mobile/15E148 Safari/604.1"), 0.14),
        (("Mozilla/5.0 (Linux; Android 9; SM-G960F) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/74.0.3729.136 Mobile Safari/537.36"), 0.14),
        ("okhttp/3.12.1", 0.1),
        ("python-requests/2.21.0", 0.06),
        ("curl/7.64.1", 0.04),
        ("PostmanRuntime/7.11.0", 0.04),
    )
    #: Resolution of the precomputed quantile tables that replace per-request
    #: log-normal draws (one ``random()`` and an index instead of ``gauss()``).
    quantile_table_size: int = 4096

    # --- Mixer / adapter --------------------------------------------------
    #: ``adapter.wso2.config.Params`` as shipped (docs/wso2-analytics.md section 1.1), in field order 1..7.
    adapter_params: tuple[tuple[str, str], ...] = (
        ("validate_subscription", "true"),
        ("disable_hostname_verification", "true"),
        ("request_stream_app_url", "wso2apim-with-analytics-apim-analytics-service.wso2:7575"),
        ("fault_stream_app_url", "wso2apim-with-analytics-apim-analytics-service.wso2:7576"),
        ("throttle_stream_app_url", "wso2apim-with-analytics-apim-analytics-service.wso2:7577"),
        ("grpc_pool_size", "5"),
        ("grpc_pool_initial_size", "1"),
    )
    adapter_config_type_url: str = "type.googleapis.com/adapter.wso2.config.Params"
    monitored_resource_type: str = "UNSPECIFIED"


#: What the simulated mesh sends the collector.
PROTOCOLS = ("mixer", "als", "otel")


@dataclass(frozen=True)
class SimulationConfig:
    """One simulation run; each field is also a flag and an ``APIM_SIM_*`` variable.

    ``apim-analytics simulate`` builds it from flags > environment > the
    ``simulate`` section of the YAML config file > these defaults; the demo,
    tests and benchmarks construct it directly.
    """

    target: str = setting("127.0.0.1:9091", env="APIM_SIM_TARGET", help="collector gRPC address HOST:PORT")
    rate: float = setting(2000.0, env="APIM_SIM_RATE", help="simulated requests per second of simulated time")
    duration: float = setting(10.0, env="APIM_SIM_DURATION", help="simulated seconds of traffic")
    start: int | str | None = setting(
        None, env="APIM_SIM_START",
        help="first request time: ISO-8601 UTC or epoch ms (default: now, floored to the minute)")
    seed: int = setting(7, env="APIM_SIM_SEED", help="seed of the catalog and the traffic")
    apis: int = setting(20, env="APIM_SIM_APIS", help="API entries in the catalog (each version counts)")
    applications: int = setting(200, env="APIM_SIM_APPLICATIONS", help="applications in the catalog")
    users: int = setting(500, env="APIM_SIM_USERS", help="users in the catalog")
    batch_size: int = setting(100, env="APIM_SIM_BATCH_SIZE", help="instances per HandleMetric call")
    concurrency: int = setting(8, env="APIM_SIM_CONCURRENCY", help="HandleMetric calls in flight")
    realtime: bool = setting(
        False, env="APIM_SIM_REALTIME",
        help="pace calls by the simulated timestamps instead of replaying as fast as possible")
    speed: float = setting(1.0, env="APIM_SIM_SPEED", help="with --realtime: simulated seconds per wall second")
    instance_name: str = setting(
        "wso2-metrics.instance.istio-system", env="APIM_SIM_INSTANCE_NAME",
        help="InstanceMsg.name, as Mixer names the wso2-metrics instance")
    dedup_base: int = setting(0, env="APIM_SIM_DEDUP_BASE", help="dedup_id of the first call (then +1 per call)")
    timeout: float = setting(10.0, env="APIM_SIM_TIMEOUT", help="deadline of one HandleMetric attempt, seconds")
    max_attempts: int = setting(
        5, env="APIM_SIM_MAX_ATTEMPTS", help="attempts per call on UNAVAILABLE/DEADLINE_EXCEEDED (1 = no retry)")
    initial_backoff: float = setting(0.05, env="APIM_SIM_INITIAL_BACKOFF", help="first retry delay, seconds")
    max_backoff: float = setting(2.0, env="APIM_SIM_MAX_BACKOFF", help="retry delay cap, seconds")
    ground_truth: str | None = setting(
        DEFAULT_GROUND_TRUTH_FILE, env="APIM_SIM_GROUND_TRUTH",
        help="CSV of what was delivered, per minute/API/app/tier/status class ('' = do not write)")
    jwks_out: str | None = setting(None, env="APIM_SIM_JWKS_OUT", help="write the token signing JWKS here")
    signing_key: str | None = setting(
        None, env="APIM_SIM_SIGNING_KEY",
        help="PEM private key to sign tokens with; created if missing (default: a fresh key per run)")
    subscriptions_out: str | None = setting(
        None, env="APIM_SIM_SUBSCRIPTIONS_OUT",
        help="write the opaque-token subscription catalog here (JSON lines, for the collector)")
    protocol: str = setting(
        "mixer", env="APIM_SIM_PROTOCOL",
        help="what the mesh sends: mixer (Istio 1.1-1.7 HandleMetric calls), als (Envoy ALS v3 streams) or otel "
             "(OTLP log exports), the last two as Istio 1.8+ sidecars do")
    openapi_out: str | None = setting(
        None, env="APIM_SIM_OPENAPI_OUT",
        help="write the catalog's APIs as OpenAPI documents into this folder (for `apim-analytics apis load`)")
    flush_interval_ms: int = setting(
        1000, env="APIM_SIM_FLUSH_INTERVAL_MS",
        help="als/otel: a sidecar flushes its buffered entries this often, in simulated ms (Envoy's "
             "buffer_flush_interval)")
    buffer_bytes: int = setting(
        16384, env="APIM_SIM_BUFFER_BYTES",
        help="als/otel: a sidecar flushes as soon as its buffered entries reach this size (Envoy's buffer_size_bytes)")
    stream_messages: int = setting(
        100, env="APIM_SIM_STREAM_MESSAGES",
        help="als: messages per stream before the sidecar reconnects (a closed stream confirms its messages)")
    dry_run: bool = setting(False, env="APIM_SIM_DRY_RUN", help="build everything, send nothing")
    json_report: bool = setting(False, env="APIM_SIM_JSON", flag="--json",
                                help="print the report as JSON on stdout (the summary goes to stderr)")
    #: The simulated world; not a flag.
    profile: SimulationProfile = field(default_factory=SimulationProfile)
    #: A ready :class:`simulator.tokens.SigningKey` (library use; wins over ``signing_key``).
    key: Any = field(default=None, compare=False, repr=False)

    def validate(self) -> None:
        """Reject values that cannot produce a run.

        Raises:
            SettingsError: naming the offending setting.
        """
        positive = {"rate": self.rate, "duration": self.duration, "batch_size": self.batch_size,
                    "concurrency": self.concurrency, "timeout": self.timeout, "max_attempts": self.max_attempts,
                    "speed": self.speed, "apis": self.apis, "applications": self.applications, "users": self.users,
                    "flush_interval_ms": self.flush_interval_ms, "buffer_bytes": self.buffer_bytes,
                    "stream_messages": self.stream_messages}
        for name, value in positive.items():
            if not value > 0:
                raise SettingsError(f"setting {name}: must be > 0, got {value!r}")
        if self.protocol not in PROTOCOLS:
            raise SettingsError(f"setting protocol: one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.dedup_base < 0:
            raise SettingsError(f"setting dedup_base: must be >= 0, got {self.dedup_base!r}")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise SettingsError("settings initial_backoff/max_backoff: need 0 <= initial <= max")


#: The defaults, for keyword defaults of library functions.
DEFAULTS = SimulationConfig()
DEFAULT_PROFILE = DEFAULTS.profile
