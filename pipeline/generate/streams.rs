//! Streams and their columns

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Stream {
    Clicks,
    Carts,
    Orders,
    Touches,
    Consents,
}

impl Stream {
    pub(super) const ALL: [Stream; 5] = [
        Stream::Clicks,
        Stream::Carts,
        Stream::Orders,
        Stream::Touches,
        Stream::Consents,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Stream::Clicks => "clicks",
            Stream::Carts => "carts",
            Stream::Orders => "orders",
            Stream::Touches => "touches",
            Stream::Consents => "consents",
        }
    }

    pub(super) fn id_prefix(self) -> &'static str {
        match self {
            Stream::Clicks => "c",
            Stream::Carts => "k",
            Stream::Orders => "o",
            Stream::Touches => "t",
            Stream::Consents => "n",
        }
    }

    pub(super) fn salt(self) -> u64 {
        0x7772_6974_0000 + self as u64
    }
}

/// One Arrow column before the writer flavour is applied.
pub(super) struct Column {
    pub(super) name: &'static str,
    pub(super) array: ArrayRef,
    /// Nullable per the contract (schemas/*.toml).
    pub(super) nullable: bool,
}

impl Column {
    pub(super) fn required(name: &'static str, array: ArrayRef) -> Self {
        Column {
            name,
            array,
            nullable: false,
        }
    }

    pub(super) fn optional(name: &'static str, array: ArrayRef) -> Self {
        Column {
            name,
            array,
            nullable: true,
        }
    }
}

/// The accessors every event row shares: its `time`, `id` and `customer` fields.
macro_rules! event_row_fields {
    () => {
        fn time(&self) -> i64 {
            self.time
        }

        fn id(&self) -> u64 {
            self.id
        }

        fn customer(&self) -> u32 {
            self.customer
        }

        fn stamp(&mut self, time: i64, id: u64) {
            self.time = time;
            self.id = id;
        }
    };
}
pub(super) use event_row_fields;

/// A compact event row of one stream.
pub(super) trait EventRow: Copy + Send + Sync + 'static {
    const STREAM: Stream;
    fn time(&self) -> i64;
    fn id(&self) -> u64;
    fn customer(&self) -> u32;
    fn stamp(&mut self, time: i64, id: u64);
    /// The stream's own columns, after event_id, customer_id and event_time, in schema order.
    fn stream_columns(rows: &[Self], bad: &BadRows, world: &World) -> Vec<Column>;
}

impl EventRow for Click {
    const STREAM: Stream = Stream::Clicks;

    event_row_fields!();

    fn stream_columns(rows: &[Self], bad: &BadRows, world: &World) -> Vec<Column> {
        let pages = rows.iter().enumerate().map(|(i, r)| {
            Some(if bad.is(i, BadKind::UnknownPageType) {
                UNKNOWN_PAGE_TYPE
            } else {
                PAGE_TYPES[usize::from(r.page)]
            })
        });
        vec![
            Column::optional("session_id", session_ids(rows.iter().map(|r| r.session), world.seed)),
            Column::required("page_type", strings(pages)),
            Column::optional("product_id", product_ids(rows.iter().map(|r| r.product))),
            Column::optional("category", strings(rows.iter().map(|r| r.product.category_name()))),
            Column::optional("brand", strings(rows.iter().map(|r| r.product.brand_name()))),
            Column::optional(
                "price",
                Arc::new(rows.iter().map(|r| r.product.price()).collect::<Float64Array>()),
            ),
            Column::optional(
                "channel",
                strings(rows.iter().map(|r| Some(CHANNELS[usize::from(r.channel)]))),
            ),
            Column::optional("device_id", device_ids(rows.iter().map(|r| r.device), world.seed)),
        ]
    }
}

impl EventRow for CartEvent {
    const STREAM: Stream = Stream::Carts;

    event_row_fields!();

    fn stream_columns(rows: &[Self], bad: &BadRows, world: &World) -> Vec<Column> {
        let quantities = rows.iter().enumerate().map(|(i, r)| {
            if bad.is(i, BadKind::ZeroQuantity) {
                0
            } else {
                i32::from(r.quantity)
            }
        });
        vec![
            Column::optional("session_id", session_ids(rows.iter().map(|r| r.session), world.seed)),
            Column::required(
                "action",
                strings(rows.iter().map(|r| Some(ACTIONS[usize::from(r.action)]))),
            ),
            Column::required("product_id", product_ids(rows.iter().map(|r| r.product))),
            Column::optional("category", strings(rows.iter().map(|r| r.product.category_name()))),
            Column::optional("brand", strings(rows.iter().map(|r| r.product.brand_name()))),
            Column::required("quantity", Arc::new(Int32Array::from_iter_values(quantities))),
            Column::optional(
                "unit_price",
                Arc::new(rows.iter().map(|r| r.product.price()).collect::<Float64Array>()),
            ),
            Column::optional("device_id", device_ids(rows.iter().map(|r| r.device), world.seed)),
        ]
    }
}

impl EventRow for OrderEvent {
    const STREAM: Stream = Stream::Orders;

    event_row_fields!();

    fn stream_columns(rows: &[Self], bad: &BadRows, world: &World) -> Vec<Column> {
        let seed = world.seed;
        let mut order_ids = StringBuilder::new();
        for r in rows {
            let _ = write!(order_ids, "ord-{seed}-{}", r.order);
            order_ids.append_value("");
        }
        let amounts = rows.iter().enumerate().map(|(i, r)| {
            if bad.is(i, BadKind::NegativeAmount) {
                -r.amount.max(1.0)
            } else {
                r.amount
            }
        });
        let address_salt = mix64(seed ^ SALT_ADDRESS);
        let mut addresses = StringBuilder::new();
        for r in rows {
            let key = (u64::from(r.customer) << 2) | u64::from(r.address);
            let _ = write!(addresses, "{:016x}", mix64(address_salt ^ key));
            addresses.append_value("");
        }
        let product = |r: &OrderEvent| Product {
            category: r.category,
            brand: r.brand,
            item: NONE_U8,
        };
        vec![
            Column::required("order_id", Arc::new(order_ids.finish())),
            Column::required(
                "status",
                strings(rows.iter().map(|r| Some(STATUSES[usize::from(r.status)]))),
            ),
            Column::required("amount", Arc::new(Float64Array::from_iter_values(amounts))),
            Column::optional(
                "item_count",
                Arc::new(
                    rows.iter()
                        .map(|r| Some(i32::from(r.item_count)))
                        .collect::<Int32Array>(),
                ),
            ),
            Column::optional("category", strings(rows.iter().map(|r| product(r).category_name()))),
            Column::optional("brand", strings(rows.iter().map(|r| product(r).brand_name()))),
            Column::optional(
                "discount_amount",
                Arc::new(rows.iter().map(|r| Some(r.discount)).collect::<Float64Array>()),
            ),
            Column::optional(
                "payment_method",
                strings(rows.iter().map(|r| Some(PAYMENT_METHODS[usize::from(r.payment)]))),
            ),
            Column::optional("device_id", device_ids(rows.iter().map(|r| r.device), seed)),
            Column::optional("shipping_address_hash", Arc::new(addresses.finish())),
        ]
    }
}

/// A Utf8 column of constant strings (`None` = null).
pub(super) fn strings<'s>(values: impl Iterator<Item = Option<&'s str>>) -> ArrayRef {
    let mut builder = StringBuilder::new();
    for value in values {
        builder.append_option(value);
    }
    Arc::new(builder.finish())
}

pub(super) fn session_ids(sessions: impl Iterator<Item = u64>, seed: u64) -> ArrayRef {
    let mut builder = StringBuilder::new();
    for session in sessions {
        if session == NO_SESSION {
            builder.append_null();
        } else {
            let _ = write!(builder, "sess-{seed}-{session}");
            builder.append_value("");
        }
    }
    Arc::new(builder.finish())
}

/// Opaque device ids: a bijective hash of the device number, so ids never collide.
pub(super) fn device_ids(devices: impl Iterator<Item = u32>, seed: u64) -> ArrayRef {
    let salt = mix64(seed ^ SALT_DEVICE_ID);
    let mut builder = StringBuilder::new();
    for device in devices {
        if device == NO_DEVICE {
            builder.append_null();
        } else {
            let _ = write!(builder, "d-{:016x}", mix64(salt ^ u64::from(device)));
            builder.append_value("");
        }
    }
    Arc::new(builder.finish())
}

pub(super) fn product_ids(products: impl Iterator<Item = Product>) -> ArrayRef {
    let mut builder = StringBuilder::new();
    for p in products {
        if p.item == NONE_U8 {
            builder.append_null();
        } else {
            let _ = write!(builder, "p-{:02}{:02}{:03}", p.category, p.brand, p.item);
            builder.append_value("");
        }
    }
    Arc::new(builder.finish())
}
