#!/usr/bin/env python3
"""A tenantd client in Python with stock grpcio and nothing generated.

Every service, message and enum comes from the server itself through gRPC
server reflection: grpcio-reflection's ProtoReflectionDescriptorDatabase
feeds a protobuf DescriptorPool, message classes are built from it at run
time, and calls go through grpcio's generic unary_unary / unary_stream.
Only google.rpc's Status and BadRequest come from a package
(googleapis-common-protos), to read rich errors.

Two phases, so that the caller can restart tenantd with a newer tenant
migration in between:

  client.py setup   --endpoint HOST:PORT --state FILE
      reflection and health; create a user, a tenant owned by that user;
      log in to the tenant and validate the token; write and read typed
      values as the user; a bad parameter's INVALID_ARGUMENT naming the field;
      a plan with nothing to upgrade. Writes what phase two needs to FILE.
  client.py upgrade --endpoint HOST:PORT --state FILE
      plan, start and watch a fleet upgrade to the newest migration; the
      tenant's new version; the new column through the user's token; the
      audit chain. Adds the reached version to FILE.
  client.py check
      only imports the packages: exit 0 when they are installed.

The admin service key comes from TENANTD_KEY or --key-file, never from the
command line (the process list is public). Any failed assertion or
unexpected error ends the script with a message on stderr and exit 1.
"""

import argparse
import json
import os
import secrets
import sys
import time
import types
import uuid

REQUIREMENTS = "tests/python/requirements.txt"

try:
    import grpc
    from google.protobuf import descriptor_pool, message_factory
    from google.rpc import error_details_pb2
    from grpc_reflection.v1alpha import reflection_pb2
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
    from grpc_status import rpc_status
except ImportError as missing:
    sys.exit(
        f"client.py: {missing}; install the client's packages with "
        f"`python3 -m pip install -r {REQUIREMENTS}`"
    )

CALL_TIMEOUT = 30.0
UPGRADE_TIMEOUT = 120.0
API_SERVICES = [
    "tenantd.v1.TenantService",
    "tenantd.v1.MigrationService",
    "tenantd.v1.UserService",
    "tenantd.v1.SessionService",
    "tenantd.v1.TenantDataService",
]


class Failed(Exception):
    """An assertion about the server's answer did not hold."""


def check(condition, what):
    if not condition:
        raise Failed(what)


def expect_eq(actual, expected, what):
    check(actual == expected, f"{what}: expected {expected!r}, got {actual!r}")


def say(text):
    print(text, flush=True)


class ReflectionV1Database(ProtoReflectionDescriptorDatabase):
    """grpcio-reflection's client asks grpc.reflection.v1alpha, tenantd serves
    grpc.reflection.v1; the two differ only in the service name, their
    messages are the same on the wire, so only the method path changes."""

    def __init__(self, channel):
        super().__init__(channel)
        self._stub = types.SimpleNamespace(
            ServerReflectionInfo=channel.stream_stream(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
        )


class Tenantd:
    """One channel, the API as the server describes it, generic calls."""

    def __init__(self, target, credentials=None):
        if credentials is None:
            self.channel = grpc.insecure_channel(target)
        else:
            self.channel = grpc.secure_channel(target, credentials)
        grpc.channel_ready_future(self.channel).result(timeout=CALL_TIMEOUT)
        self.reflection = ReflectionV1Database(self.channel)
        self.pool = descriptor_pool.DescriptorPool(self.reflection)

    def close(self):
        self.channel.close()

    def message(self, full_name, /, **fields):
        """A message of the server's API, built from its descriptor."""
        descriptor = self.pool.FindMessageTypeByName(full_name)
        return message_factory.GetMessageClass(descriptor)(**fields)

    def enum(self, full_name, value_name):
        return self.pool.FindEnumTypeByName(full_name).values_by_name[value_name].number

    def enum_name(self, full_name, number):
        return self.pool.FindEnumTypeByName(full_name).values_by_number[number].name

    def _method(self, service, method, kind, credential):
        desc = self.pool.FindServiceByName(service).FindMethodByName(method)
        check(desc is not None, f"{service} has no method {method}")
        request_class = message_factory.GetMessageClass(desc.input_type)
        response_class = message_factory.GetMessageClass(desc.output_type)
        callable_ = kind(
            f"/{service}/{method}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        metadata = [("authorization", f"Bearer {credential}")] if credential else []
        return request_class, callable_, metadata

    def call(self, service, method, credential, /, **fields):
        request_class, rpc, metadata = self._method(
            service, method, self.channel.unary_unary, credential
        )
        return rpc(request_class(**fields), metadata=metadata, timeout=CALL_TIMEOUT)

    def call_expecting_error(self, service, method, credential, /, **fields):
        """The call's grpc.RpcError (also a grpc.Call), which must happen."""
        request_class, rpc, metadata = self._method(
            service, method, self.channel.unary_unary, credential
        )
        try:
            response = rpc(request_class(**fields), metadata=metadata, timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            return error
        raise Failed(f"{service}/{method} succeeded where it must fail: {response}")

    def stream(self, service, method, credential, timeout, /, **fields):
        request_class, rpc, metadata = self._method(
            service, method, self.channel.unary_stream, credential
        )
        return rpc(request_class(**fields), metadata=metadata, timeout=timeout)

    # Typed values of tenantd.v1.TenantDataService.
    def value(self, **kind):
        return self.message("tenantd.v1.Value", **kind)


def plain(value):
    """A tenantd.v1.Value as (kind, Python value)."""
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null":
        return ("null", None)
    if kind == "timestamptz":
        ts = value.timestamptz
        return (kind, ts.seconds + ts.nanos / 1e9)
    if kind == "array":
        return (kind, [plain(v) for v in value.array.values])
    return (kind, getattr(value, kind))


def columns_of(response):
    return [(c.name, c.type) for c in response.columns]


def is_uuid(text):
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def role_name(api, number):
    return api.enum_name("tenantd.v1.MemberRole", number)


def setup(api, admin, state_path):
    suffix = secrets.token_hex(4)

    say("reflection: listing services")
    services = set(api.reflection.get_services())
    for name in API_SERVICES + ["grpc.health.v1.Health"]:
        check(name in services, f"reflection lists {name} (it lists {sorted(services)})")
    say(f"  {len(services)} services, every tenantd.v1 service among them")
    health = api.call(
        "grpc.health.v1.Health",
        "Check",
        None,
        service="tenantd.v1.TenantDataService",
    )
    expect_eq(
        api.enum_name("grpc.health.v1.HealthCheckResponse.ServingStatus", health.status),
        "SERVING",
        "health of tenantd.v1.TenantDataService",
    )

    email = f"ada-{suffix}@example.com"
    password = secrets.token_urlsafe(24)
    say(f"UserService.CreateUser {email}")
    user = api.call(
        "tenantd.v1.UserService",
        "CreateUser",
        admin,
        first_name="Ada",
        last_name="Pythonista",
        email=email,
        password=password,
    )
    check(is_uuid(user.id), f"the user id is a UUID: {user.id!r}")
    expect_eq(user.email, email, "the user's e-mail")
    expect_eq(user.first_name, "Ada", "the user's first name")
    expect_eq(
        api.enum_name("tenantd.v1.UserStatus", user.status),
        "USER_STATUS_ACTIVE",
        "the user's status",
    )
    expect_eq(user.version, 1, "the user's version")
    say(f"  user {user.id}")

    slug = f"py-client-{suffix}"
    say(f"TenantService.CreateTenant {slug}, owner {user.id}")
    create = dict(
        name="Python Client GmbH",
        slug=slug,
        industry="software",
        country="DE",
        owner_user_id=user.id,
        idempotency_key=f"python-client-{suffix}",
    )
    tenant = api.call("tenantd.v1.TenantService", "CreateTenant", admin, **create)
    check(is_uuid(tenant.id), f"the tenant id is a UUID: {tenant.id!r}")
    expect_eq(tenant.slug, slug, "the tenant's slug")
    expect_eq(tenant.country, "DE", "the tenant's country")
    expect_eq(
        api.enum_name("tenantd.v1.TenantStatus", tenant.status),
        "TENANT_STATUS_ACTIVE",
        "the tenant's status",
    )
    expect_eq(tenant.schema_name, "tenant_" + uuid.UUID(tenant.id).hex, "the schema name")
    check(tenant.schema_version >= 1, f"the tenant has its migrations: {tenant.schema_version}")
    say(f"  tenant {tenant.id} at schema version {tenant.schema_version}")
    replay = api.call("tenantd.v1.TenantService", "CreateTenant", admin, **create)
    expect_eq(replay.id, tenant.id, "the same idempotency key returns the same tenant")

    say(f"SessionService.Login {email} into {slug}")
    login = api.call(
        "tenantd.v1.SessionService",
        "Login",
        admin,
        email=email,
        password=password,
        tenant_id=tenant.id,
        device="python-client",
        client_ip="192.0.2.61",
    )
    check(login.access_token.count(".") == 2, "the access token is a JWT")
    check(login.refresh_token != "", "a refresh token is issued")
    check(is_uuid(login.session_id), f"the session id is a UUID: {login.session_id!r}")
    expect_eq(login.principal.user_id, user.id, "the login's user")
    expect_eq(login.principal.tenant_id, tenant.id, "the login's tenant")
    expect_eq(role_name(api, login.principal.role), "MEMBER_ROLE_OWNER", "the login's role")
    token = login.access_token

    say("SessionService.ValidateToken")
    principal = api.call(
        "tenantd.v1.SessionService", "ValidateToken", admin, access_token=token
    )
    expect_eq(principal.user_id, user.id, "the token's user")
    expect_eq(principal.tenant_id, tenant.id, "the token's tenant")
    expect_eq(principal.session_id, login.session_id, "the token's session")
    expect_eq(role_name(api, principal.role), "MEMBER_ROLE_OWNER", "the token's role")
    check(
        principal.expires_at.seconds > time.time(),
        f"the token expires in the future: {principal.expires_at.seconds}",
    )
    say(f"  user {principal.user_id}, tenant {principal.tenant_id}, OWNER")

    code = f"PY-{suffix}"
    name = "Grüße & Söhne GmbH"
    say(f"TenantDataService.Execute INSERT customer {code} with the user's token")
    inserted = api.call(
        "tenantd.v1.TenantDataService",
        "Execute",
        token,
        tenant_id=tenant.id,
        sql="INSERT INTO customers (code, name, credit_limit) VALUES ($1, $2, $3) RETURNING id",
        params=[api.value(text=code), api.value(text=name), api.value(numeric="12345.60")],
    )
    expect_eq(inserted.rows_affected, 1, "rows inserted")
    expect_eq(columns_of(inserted), [("id", "uuid")], "the RETURNING columns")
    kind, customer_id = plain(inserted.rows[0].values[0])
    expect_eq(kind, "uuid", "the kind of the returned id")
    check(is_uuid(customer_id), f"the customer id is a UUID: {customer_id!r}")

    say("TenantDataService.Execute read_only SELECT it back")
    read = api.call(
        "tenantd.v1.TenantDataService",
        "Execute",
        token,
        tenant_id=tenant.id,
        sql="SELECT id, code, name, credit_limit, credit_limit * 2 AS doubled, is_active, "
        "created_at, tax_id FROM customers WHERE code = $1",
        params=[api.value(text=code)],
        read_only=True,
    )
    expect_eq(
        columns_of(read),
        [
            ("id", "uuid"),
            ("code", "text"),
            ("name", "text"),
            ("credit_limit", "numeric"),
            ("doubled", "numeric"),
            ("is_active", "bool"),
            ("created_at", "timestamptz"),
            ("tax_id", "text"),
        ],
        "the columns read",
    )
    expect_eq(len(read.rows), 1, "rows read")
    row = [plain(v) for v in read.rows[0].values]
    expect_eq(row[0], ("uuid", customer_id), "id")
    expect_eq(row[1], ("text", code), "code")
    expect_eq(row[2], ("text", name), "name")
    expect_eq(row[3], ("numeric", "12345.60"), "credit_limit")
    expect_eq(row[4], ("numeric", "24691.20"), "credit_limit * 2")
    expect_eq(row[5], ("bool", True), "is_active")
    expect_eq(row[6][0], "timestamptz", "the kind of created_at")
    check(abs(row[6][1] - time.time()) < 600, f"created_at is now: {row[6][1]}")
    expect_eq(row[7], ("null", None), "tax_id")
    say(f"  {row[1][1]} | {row[2][1]} | credit {row[3][1]} | id {row[0][1]}")

    say("TenantDataService.Execute with a malformed numeric parameter")
    error = api.call_expecting_error(
        "tenantd.v1.TenantDataService",
        "Execute",
        token,
        tenant_id=tenant.id,
        sql="INSERT INTO customers (code, name, credit_limit) VALUES ($1, $2, $3)",
        params=[api.value(text=code + "-bad"), api.value(text=name), api.value(numeric="12,5")],
    )
    expect_eq(error.code(), grpc.StatusCode.INVALID_ARGUMENT, "the bad parameter's code")
    status = rpc_status.from_call(error)
    check(status is not None, "the error carries grpc-status-details-bin")
    bad_requests = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            bad_requests.append(bad)
    expect_eq(len(bad_requests), 1, "google.rpc.BadRequest details")
    fields = [v.field for v in bad_requests[0].field_violations]
    expect_eq(fields, ["params[2]"], "the fields the BadRequest names")
    say(f"  INVALID_ARGUMENT, {fields[0]}: {bad_requests[0].field_violations[0].description}")

    say("MigrationService.PlanUpgrade before any newer migration")
    plan = api.call("tenantd.v1.MigrationService", "PlanUpgrade", admin)
    expect_eq(plan.latest_version, tenant.schema_version, "the latest migration")
    expect_eq(plan.behind, 0, "tenants behind")
    say(f"  every tenant at version {plan.latest_version}: nothing to do")

    with open(state_path, "w", encoding="utf-8") as f:
        json.dump(
            {
                "user_id": user.id,
                "tenant_id": tenant.id,
                "slug": slug,
                "access_token": token,
                "schema_version": tenant.schema_version,
                "customer_code": code,
            },
            f,
            indent=2,
        )


def upgrade(api, admin, state_path):
    with open(state_path, encoding="utf-8") as f:
        state = json.load(f)
    tenant_id = state["tenant_id"]
    token = state["access_token"]
    before = state["schema_version"]
    target = before + 1

    say("MigrationService.PlanUpgrade")
    plan = api.call("tenantd.v1.MigrationService", "PlanUpgrade", admin)
    expect_eq(plan.latest_version, target, "the latest migration")
    expect_eq(plan.target_version, target, "the plan's target")
    expect_eq(plan.total_tenants, 1, "tenants in the plan")
    expect_eq(plan.behind, 1, "tenants behind")
    expect_eq(list(plan.behind_sample), [tenant_id], "the tenants behind")
    expect_eq(
        [(v.version, v.tenants) for v in plan.versions], [(before, 1)], "tenants per version"
    )
    say(f"  1 tenant behind, version {before} -> {target}")

    say("MigrationService.StartUpgrade for every tenant")
    run = api.call(
        "tenantd.v1.MigrationService",
        "StartUpgrade",
        admin,
        concurrency=2,
        max_failures=0,
        lock_timeout=api.message("google.protobuf.Duration", seconds=5),
    )
    check(is_uuid(run.id), f"the run id is a UUID: {run.id!r}")
    expect_eq(run.target_version, target, "the run's target")
    expect_eq(run.totals.total, 1, "tenants in the run")
    status = api.enum_name("tenantd.v1.UpgradeStatus", run.status)
    check(
        status in ("UPGRADE_STATUS_RUNNING", "UPGRADE_STATUS_SUCCEEDED"),
        f"a started run runs: {status}",
    )
    say(f"  run {run.id}")

    say("MigrationService.WatchUpgrade until the run ends")
    outcomes = []
    last = None
    events = api.stream(
        "tenantd.v1.MigrationService",
        "WatchUpgrade",
        admin,
        UPGRADE_TIMEOUT,
        run_id=run.id,
        interval=api.message("google.protobuf.Duration", nanos=100_000_000),
        from_start=True,
    )
    for event in events:
        which = event.WhichOneof("event")
        if which == "tenant":
            outcomes.append(event.tenant)
            say(
                f"  tenant {event.tenant.tenant_id}: ok={event.tenant.ok} "
                f"{event.tenant.from_version} -> {event.tenant.to_version}"
            )
        elif which == "progress":
            last = event.progress
            t = last.totals
            say(
                f"  {api.enum_name('tenantd.v1.UpgradeStatus', last.status)}: "
                f"pending {t.pending}, running {t.running}, done {t.done}, failed {t.failed}"
            )
    check(last is not None, "the watch sent the run's progress")
    expect_eq(
        api.enum_name("tenantd.v1.UpgradeStatus", last.status),
        "UPGRADE_STATUS_SUCCEEDED",
        f"the run's end ({last.status_reason})",
    )
    expect_eq(len(outcomes), 1, "tenant outcomes")
    outcome = outcomes[0]
    expect_eq(outcome.tenant_id, tenant_id, "the upgraded tenant")
    check(outcome.ok, f"the tenant's upgrade succeeded: {outcome.sqlstate} {outcome.message}")
    expect_eq((outcome.from_version, outcome.to_version), (before, target), "the versions")

    say("MigrationService.GetUpgrade")
    got = api.call("tenantd.v1.MigrationService", "GetUpgrade", admin, run_id=run.id)
    expect_eq(
        api.enum_name("tenantd.v1.UpgradeStatus", got.status),
        "UPGRADE_STATUS_SUCCEEDED",
        "the run's status",
    )
    expect_eq((got.totals.done, got.totals.failed), (1, 0), "the run's done and failed")
    check(got.HasField("finished_at"), "the run has finished")

    say("TenantService.GetTenant")
    tenant = api.call("tenantd.v1.TenantService", "GetTenant", admin, id=tenant_id)
    expect_eq(tenant.schema_version, target, "the tenant's schema version")
    say(f"  tenant at version {tenant.schema_version}")

    code = state["customer_code"]
    say("TenantDataService.Execute UPDATE of the new column with the user's token")
    updated = api.call(
        "tenantd.v1.TenantDataService",
        "Execute",
        token,
        tenant_id=tenant_id,
        sql="UPDATE customers SET python_note = $1 WHERE code = $2",
        params=[api.value(text="upgraded from Python"), api.value(text=code)],
    )
    expect_eq(updated.rows_affected, 1, "rows updated")
    read = api.call(
        "tenantd.v1.TenantDataService",
        "Execute",
        token,
        tenant_id=tenant_id,
        sql="SELECT code, python_note FROM customers",
        read_only=True,
    )
    expect_eq(columns_of(read), [("code", "text"), ("python_note", "text")], "the columns")
    expect_eq(
        [[plain(v) for v in r.values] for r in read.rows],
        [[("text", code), ("text", "upgraded from Python")]],
        "the rows",
    )
    say("  python_note reads back")

    say("UserService.VerifyAudit")
    audit = api.call("tenantd.v1.UserService", "VerifyAudit", admin)
    check(audit.ok, f"the audit chain is intact (first broken: {audit.first_broken_seq})")
    expect_eq(audit.first_broken_seq, 0, "the first broken event")
    check(audit.events_checked > 0, f"audit events were checked: {audit.events_checked}")
    say(f"  {audit.events_checked} events, chain intact")

    state["upgraded_version"] = tenant.schema_version
    with open(state_path, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2)


def admin_key(args):
    if args.key_file:
        with open(args.key_file, encoding="utf-8") as f:
            return f.read().strip()
    key = os.environ.get("TENANTD_KEY", "").strip()
    if not key:
        sys.exit("client.py: no admin key: set TENANTD_KEY or give --key-file")
    return key


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("phase", choices=["setup", "upgrade", "check"])
    parser.add_argument(
        "--endpoint",
        default=os.environ.get("TENANTD_ENDPOINT", "127.0.0.1:50051"),
        help="host:port of tenantd (an http:// prefix is dropped; env TENANTD_ENDPOINT)",
    )
    parser.add_argument("--key-file", help="file holding the admin service key (else TENANTD_KEY)")
    parser.add_argument("--ca", help="CA certificate (PEM) of a TLS server: speak TLS, verified by it")
    parser.add_argument("--cert", help="client certificate (PEM) for a server that requires mutual TLS")
    parser.add_argument("--cert-key", help="the private key (PEM) of --cert")
    parser.add_argument("--state", help="JSON file passing ids from setup to upgrade")
    args = parser.parse_args()
    if args.phase == "check":
        say(f"grpcio {grpc.__version__}: ready")
        return 0
    if not args.state:
        parser.error("--state is required")
    key = admin_key(args)
    target = args.endpoint.removeprefix("http://").removeprefix("https://")
    credentials = None
    if args.ca:

        def read(path):
            with open(path, "rb") as f:
                return f.read()

        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(args.ca),
            private_key=read(args.cert_key) if args.cert_key else None,
            certificate_chain=read(args.cert) if args.cert else None,
        )

    say(f"connecting to {target}" + (" over TLS" if credentials else ""))
    try:
        api = Tenantd(target, credentials)
    except grpc.FutureTimeoutError:
        print(f"FAILED: tenantd at {target} did not answer", file=sys.stderr)
        return 1
    try:
        {"setup": setup, "upgrade": upgrade}[args.phase](api, key, args.state)
    except Failed as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    except grpc.RpcError as error:
        print(f"FAILED: unexpected {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    finally:
        api.close()
    say(f"{args.phase}: every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
