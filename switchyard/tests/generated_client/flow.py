"""A customer orders and pays, an admin reads the revenue: through a Python client generated
by openapi-python-client from the server's own /api/openapi.json (switchyard/tests/
generated_client.rs generates it and runs this against the real binary).

Every call goes through the generated modules and models, with the client raising on any
status the document does not list. Prints one JSON line with what it saw; exits non-zero on
any surprise.
"""

import json
import os
import sys

from switchyard_api_client import AuthenticatedClient
from switchyard_api_client.api.orders import create_order, get_order, list_orders
from switchyard_api_client.api.payments import get_revenue, pay_order
from switchyard_api_client.models import (
    ErrorBody,
    ErrorCode,
    Item,
    NewOrder,
    Order,
    OrderPage,
    OrderStatus,
    PaymentReceipt,
    PaymentRequest,
    PaymentStatus,
    Revenue,
)


def check(condition, what):
    if not condition:
        print(f"generated client: {what}", file=sys.stderr)
        sys.exit(1)


def client(token):
    return AuthenticatedClient(
        base_url=os.environ["SWITCHYARD_URL"],
        token=token,
        raise_on_unexpected_status=True,
    )


customer = client(os.environ["CUSTOMER_TOKEN"])
admin = client(os.environ["ADMIN_TOKEN"])

before = get_revenue.sync(client=admin)
check(isinstance(before, Revenue), f"revenue before: {before!r}")

new = NewOrder(
    items=[
        Item(sku="milk-1l", qty=2, unit_price_paise=6500),
        Item(sku="bread-400g", qty=1, unit_price_paise=4500),
    ],
    address="12 MG Road, Bengaluru",
)
created = create_order.sync_detailed(client=customer, body=new)
check(created.status_code == 201, f"create: {created.status_code}")
order = created.parsed
check(isinstance(order, Order), f"create: {order!r}")
check(order.status == OrderStatus.PLACED, f"status: {order.status}")
check(order.total_paise == 17500, f"total: {order.total_paise}")
check(order.paid is False, "paid before paying")

def pay(key):
    return pay_order.sync_detailed(
        id=order.id,
        client=customer,
        body=PaymentRequest(amount_paise=order.total_paise),
        idempotency_key=key,
    )


paid = pay(f"py-{order.id}")
check(paid.status_code == 201, f"pay: {paid.status_code} {paid.content!r}")
receipt = paid.parsed
check(isinstance(receipt, PaymentReceipt), f"pay: {receipt!r}")
check(receipt.status == PaymentStatus.PAID and receipt.order_id == order.id, f"receipt: {receipt!r}")
check(receipt.amount_paise == 17500, f"amount: {receipt.amount_paise}")

# The same request again: the stored answer, counted once.
again = pay(f"py-{order.id}")
check(again.status_code == 201, f"replay: {again.status_code}")
check(again.headers.get("idempotent-replayed") == "true", f"replay headers: {again.headers}")
check(again.parsed.payment_id == receipt.payment_id, "replay: another payment")

# A second payment with a new key: the one error shape, typed.
twice = pay(f"py-{order.id}-2")
check(twice.status_code == 409, f"second payment: {twice.status_code}")
check(isinstance(twice.parsed, ErrorBody) and twice.parsed.error == ErrorCode.CONFLICT, f"second payment: {twice.parsed!r}")

read = get_order.sync(id=order.id, client=customer)
check(isinstance(read, Order) and read.paid, f"read back: {read!r}")
page = list_orders.sync(client=customer, limit=200)
check(isinstance(page, OrderPage) and any(o.id == order.id for o in page.orders), f"list: {page!r}")

after = get_revenue.sync(client=admin)
check(isinstance(after, Revenue), f"revenue after: {after!r}")
check(after.total_paise == before.total_paise + 17500, f"revenue {before.total_paise} -> {after.total_paise}")
check(after.paid_orders == before.paid_orders + 1, f"paid orders {before.paid_orders} -> {after.paid_orders}")

print(json.dumps({
    "order": order.id,
    "payment": receipt.payment_id,
    "revenue_paise": after.total_paise,
    "paid_orders": after.paid_orders,
}))
