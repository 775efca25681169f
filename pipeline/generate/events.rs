//! Events

use super::*;

#[derive(Clone, Copy, Debug)]
pub(super) struct Click {
    pub(super) time: i64,
    pub(super) id: u64,
    pub(super) session: u64,
    pub(super) customer: u32,
    pub(super) device: u32,
    pub(super) product: Product,
    pub(super) page: u8,
    pub(super) channel: u8,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct CartEvent {
    pub(super) time: i64,
    pub(super) id: u64,
    pub(super) session: u64,
    pub(super) customer: u32,
    pub(super) device: u32,
    pub(super) product: Product,
    pub(super) action: u8,
    pub(super) quantity: u8,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct OrderEvent {
    pub(super) time: i64,
    pub(super) id: u64,
    pub(super) order: u64,
    pub(super) amount: f64,
    pub(super) discount: f64,
    pub(super) customer: u32,
    pub(super) device: u32,
    pub(super) item_count: u16,
    pub(super) category: u8,
    pub(super) brand: u8,
    pub(super) status: u8,
    pub(super) payment: u8,
    pub(super) address: u8,
}

/// All simulated events, bucketed by stream and day of `event_time`.
pub(super) struct Sink {
    pub(super) clicks: Vec<Vec<Click>>,
    pub(super) carts: Vec<Vec<CartEvent>>,
    pub(super) orders: Vec<Vec<OrderEvent>>,
    pub(super) next_click: u64,
    pub(super) next_cart: u64,
    pub(super) next_order_event: u64,
    pub(super) next_session: u64,
    pub(super) next_order: u64,
}

impl Sink {
    pub(super) fn new(days: u32) -> Self {
        Sink {
            clicks: (0..days).map(|_| Vec::new()).collect(),
            carts: (0..days).map(|_| Vec::new()).collect(),
            orders: (0..days).map(|_| Vec::new()).collect(),
            next_click: 0,
            next_cart: 0,
            next_order_event: 0,
            next_session: 0,
            next_order: 0,
        }
    }

    pub(super) fn new_session(&mut self) -> u64 {
        self.next_session += 1;
        self.next_session
    }

    pub(super) fn new_order(&mut self) -> u64 {
        self.next_order += 1;
        self.next_order
    }
}

pub(super) fn simulate(world: &World) -> Sink {
    let mut profiles: Vec<Profile> = (0..world.customers).map(|c| draw_profile(world, c as u32)).collect();
    calibrate_activity(world, &mut profiles);
    settle_last_visits(world, &mut profiles);
    let shared = assign_shared_devices(world, &profiles);

    let mut sink = Sink::new(world.days);
    for (customer, profile) in profiles.iter().enumerate() {
        let customer = customer as u32;
        let visits = shared.get(&customer).map_or(&[][..], Vec::as_slice);
        CustomerSim::new(world, customer, profile).run(&mut sink, visits);
    }
    info!(
        clicks = sink.next_click,
        carts = sink.next_cart,
        orders = sink.next_order_event,
        sessions = sink.next_session,
        "generate: events simulated"
    );
    sink
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SessionKind {
    /// An ordinary visit: browse, maybe cart, maybe buy.
    Browse,
    /// A focused visit that ends with items left in the cart.
    Abandon,
    /// An order attempt that fails or is cancelled.
    FailedOrder,
    /// A purchase that is paid, and refunded if `refund`.
    Purchase { refund: bool },
}

#[derive(Clone, Copy)]
pub(super) struct SessionCtx {
    pub(super) session: u64,
    pub(super) device: u32,
    pub(super) channel: u8,
}

#[derive(Clone, Copy)]
pub(super) struct Line {
    pub(super) product: Product,
    pub(super) quantity: u8,
}

/// One customer's simulation. Event times in `scratch` are relative to the session start until
/// the session is delivered to the sink.
pub(super) struct CustomerSim<'a> {
    pub(super) world: &'a World,
    pub(super) profile: &'a Profile,
    pub(super) customer: u32,
    pub(super) rng: ChaCha8Rng,
    pub(super) clicks: Vec<Click>,
    pub(super) carts: Vec<CartEvent>,
    pub(super) orders: Vec<OrderEvent>,
    pub(super) viewed: Vec<Product>,
    pub(super) basket: Vec<Line>,
}

impl<'a> CustomerSim<'a> {
    pub(super) fn new(world: &'a World, customer: u32, profile: &'a Profile) -> Self {
        CustomerSim {
            world,
            profile,
            customer,
            rng: world.customer_rng(customer, SALT_SESSIONS),
            clicks: Vec::new(),
            carts: Vec::new(),
            orders: Vec::new(),
            viewed: Vec::new(),
            basket: Vec::new(),
        }
    }

    pub(super) fn run(mut self, sink: &mut Sink, shared_visits: &[(u32, u32)]) {
        let p = self.profile;
        // The first and the last visit pin first_seen and last_seen, i.e. the lifecycle stage.
        self.session(sink, p.start, SessionKind::Browse, None);
        if p.stop > p.start {
            self.session(sink, p.stop, SessionKind::Browse, None);
        }
        let expected = p.sessions_per_day * f64::from(p.stop - p.start + 1);
        for _ in 0..poisson(&mut self.rng, expected) {
            let day = between(&mut self.rng, p.start, p.stop);
            self.session(sink, day, SessionKind::Browse, None);
        }
        for &(day, device) in shared_visits {
            self.session(sink, day, SessionKind::Browse, Some(device));
        }
        if p.abandoner {
            self.abandon_cart(sink);
        }
        if p.low_credit {
            self.fail_orders(sink);
        }
        if p.abuser {
            self.buy_and_refund(sink);
        }
        if p.big_ticket {
            self.buy_big_ticket(sink);
        }
    }

    /// One expensive paid order in the last year (`big_spender`, with few orders).
    pub(super) fn buy_big_ticket(&mut self, sink: &mut Sink) {
        let p = self.profile;
        let from = p.start.max(self.world.window_start(YEAR_DAYS));
        if from <= p.stop {
            let day = between(&mut self.rng, from, p.stop);
            self.session(sink, day, SessionKind::Purchase { refund: false }, None);
        }
    }

    /// A session in the last 3 days ending with a full cart (`cart_abandoner`). It may fall
    /// after the provisional last visit: the customer is new or active either way.
    pub(super) fn abandon_cart(&mut self, sink: &mut Sink) {
        let from = self.profile.start.max(self.world.window_start(ABANDON_DAYS));
        let day = between(&mut self.rng, from, self.world.last);
        self.session(sink, day, SessionKind::Abandon, None);
    }

    /// Several failed or cancelled orders in the last 30 days (`low_credit`).
    pub(super) fn fail_orders(&mut self, sink: &mut Sink) {
        let from = self.profile.start.max(self.world.window_start(RECENT_DAYS));
        let attempts = between(&mut self.rng, LOW_CREDIT_ATTEMPTS.0, LOW_CREDIT_ATTEMPTS.1);
        for attempt in 0..attempts {
            let day = between(&mut self.rng, from, self.world.last);
            let kind = if attempt < LOW_CREDIT_MIN_FAILURES || self.rng.random_bool(0.5) {
                SessionKind::FailedOrder
            } else {
                SessionKind::Browse
            };
            self.session(sink, day, kind, None);
        }
    }

    /// Paid orders in the last year, most of them refunded (`refund_risk`). Purchases end early
    /// enough for the refund to arrive by `end` when the history allows it.
    pub(super) fn buy_and_refund(&mut self, sink: &mut Sink) {
        let p = self.profile;
        let from = p.start.max(self.world.window_start(YEAR_DAYS));
        let mut to = p.stop.min(self.world.last.saturating_sub(REFUND_DELAY_DAYS.1));
        if to < from {
            to = p.stop;
        }
        if to < from {
            return;
        }
        let purchases = between(&mut self.rng, ABUSER_PURCHASES.0, ABUSER_PURCHASES.1);
        for purchase in 0..purchases {
            let day = between(&mut self.rng, from, to);
            let refund = purchase < ABUSER_FORCED_REFUNDS || self.rng.random_bool(ABUSER_REFUND_PROB);
            self.session(sink, day, SessionKind::Purchase { refund }, None);
        }
    }

    /// One visit: landing page, product views, maybe a cart and an order.
    pub(super) fn session(&mut self, sink: &mut Sink, day: u32, kind: SessionKind, shared_device: Option<u32>) {
        let (device, channel) = match shared_device {
            Some(device) => (device, CHANNEL_WEB),
            None => self.own_device(),
        };
        // A few trackers lose the session cookie.
        let session = if self.rng.random_bool(NULL_SESSION_SHARE) {
            NO_SESSION
        } else {
            sink.new_session()
        };
        let ctx = SessionCtx {
            session,
            device,
            channel,
        };
        let category = self.session_category(kind);

        let mut t = 0;
        let (page, product) = self.landing_page(kind, category);
        self.click(t, &ctx, page, product);

        self.viewed.clear();
        for _ in 0..self.view_count(kind) {
            t += gap_ms(&mut self.rng, 4.0, 20.0);
            if self.rng.random_bool(NAV_PAGE_PROB) {
                let (page, product) = self.nav_page(category);
                self.click(t, &ctx, page, product);
                t += gap_ms(&mut self.rng, 3.0, 12.0);
            }
            let view_category = if self.rng.random_bool(SESSION_CATEGORY_VIEW_PROB) {
                category
            } else {
                weighted_category(&mut self.rng)
            };
            let product = self.pick_product(view_category);
            self.click(t, &ctx, PAGE_PRODUCT, product);
            self.viewed.push(product);
        }

        self.basket.clear();
        let wants_cart = match kind {
            SessionKind::Browse => self.rng.random_bool(self.profile.cart_prob),
            _ => true,
        };
        if wants_cart {
            t = self.fill_cart(t, &ctx, kind);
        }

        let buys = !self.basket.is_empty()
            && match kind {
                SessionKind::Browse => self.rng.random_bool(self.profile.buy_prob),
                SessionKind::Abandon => false,
                SessionKind::FailedOrder | SessionKind::Purchase { .. } => true,
            };
        if buys {
            t += gap_ms(&mut self.rng, 4.0, 15.0);
            self.click(t, &ctx, PAGE_CHECKOUT, Product::NONE);
            t += gap_ms(&mut self.rng, 20.0, 40.0);
            self.place_order(sink, t, &ctx, kind);
        }
        self.deliver(sink, day, t);
    }

    pub(super) fn own_device(&mut self) -> (u32, u8) {
        let p = self.profile;
        let k = if p.devices == 1 || self.rng.random_bool(PRIMARY_DEVICE_PROB) {
            0
        } else {
            self.rng.random_range(1..p.devices)
        };
        (
            self.customer * DEVICE_STRIDE + u32::from(k),
            p.device_channels[usize::from(k)],
        )
    }

    /// Mostly a favourite category; loyal customers stick to their first one.
    pub(super) fn session_category(&mut self, kind: SessionKind) -> u8 {
        let p = self.profile;
        if kind != SessionKind::Browse {
            return p.favourites[0];
        }
        if p.loyal && self.rng.random_bool(LOYAL_CATEGORY_PROB) {
            return p.favourites[0];
        }
        if self.rng.random_bool(FAVOURITE_CATEGORY_PROB) {
            p.favourites[self.rng.random_range(0..2usize)]
        } else {
            weighted_category(&mut self.rng)
        }
    }

    pub(super) fn landing_page(&mut self, kind: SessionKind, category: u8) -> (u8, Product) {
        if kind != SessionKind::Browse {
            return (PAGE_HOME, Product::NONE);
        }
        let promo = if self.profile.promo_lover {
            PROMO_LOVER_PROMO_PAGE_PROB
        } else {
            PROMO_PAGE_PROB
        };
        if self.rng.random_bool(promo) {
            return (PAGE_PROMO, Product::NONE);
        }
        match weighted(&mut self.rng, &LANDING_WEIGHTS) {
            0 => (PAGE_HOME, Product::NONE),
            1 => (PAGE_SEARCH, Product::NONE),
            _ => (PAGE_CATEGORY, Product::category_only(category)),
        }
    }

    pub(super) fn nav_page(&mut self, category: u8) -> (u8, Product) {
        match weighted(&mut self.rng, &NAV_WEIGHTS) {
            0 => (PAGE_CATEGORY, Product::category_only(category)),
            1 => (PAGE_SEARCH, Product::NONE),
            _ => (PAGE_OTHER, Product::NONE),
        }
    }

    pub(super) fn view_count(&mut self, kind: SessionKind) -> u32 {
        match kind {
            SessionKind::Browse => {
                let mut views = 1;
                while views < MAX_VIEWS && self.rng.random_bool(MORE_VIEWS_PROB) {
                    views += 1;
                }
                views
            }
            // Enough views and adds of one category for `category_intent` (3 views + 3 x 1 add).
            SessionKind::Abandon => between(&mut self.rng, 3, 6),
            SessionKind::FailedOrder | SessionKind::Purchase { .. } => between(&mut self.rng, 1, 3),
        }
    }

    pub(super) fn pick_product(&mut self, category: u8) -> Product {
        let p = self.profile;
        let brand = match p.favourites.iter().position(|&f| f == category) {
            Some(0) if p.loyal && self.rng.random_bool(LOYAL_BRAND_PROB) => p.preferred_brands[0],
            Some(k) if self.rng.random_bool(PREFERRED_BRAND_PROB) => p.preferred_brands[k],
            _ => popular_brand(&mut self.rng, category),
        };
        let item = (p.price_tier + ITEM_SPREAD * normal(&mut self.rng))
            .round()
            .clamp(0.0, f64::from(MAX_ITEM)) as u8;
        Product { category, brand, item }
    }

    /// Add viewed products to the cart, sometimes remove one again. Returns the time cursor.
    pub(super) fn fill_cart(&mut self, mut t: i64, ctx: &SessionCtx, kind: SessionKind) -> i64 {
        let adds = match kind {
            SessionKind::Browse => {
                1 + u32::from(self.rng.random_bool(SECOND_ADD_PROB)) + u32::from(self.rng.random_bool(THIRD_ADD_PROB))
            }
            _ => between(&mut self.rng, 1, 2),
        };
        for _ in 0..adds {
            let index = self.rng.random_range(0..self.viewed.len());
            let product = self.viewed[index];
            let quantity = 1 + weighted(&mut self.rng, &QUANTITY_WEIGHTS) as u8;
            t += gap_ms(&mut self.rng, 5.0, 15.0);
            self.cart(t, ctx, ACTION_ADD, product, quantity);
            match self.basket.iter_mut().find(|line| line.product == product) {
                Some(line) => line.quantity += quantity,
                None => self.basket.push(Line { product, quantity }),
            }
        }
        // Abandoned carts keep at least one line; ordinary carts may be emptied.
        let keep = usize::from(kind != SessionKind::Browse);
        if self.basket.len() > keep && self.rng.random_bool(REMOVE_PROB) {
            let index = self.rng.random_range(0..self.basket.len());
            let line = self.basket.remove(index);
            t += gap_ms(&mut self.rng, 5.0, 20.0);
            self.cart(t, ctx, ACTION_REMOVE, line.product, line.quantity);
        }
        t
    }

    pub(super) fn place_order(&mut self, sink: &mut Sink, t: i64, ctx: &SessionCtx, kind: SessionKind) {
        let p = self.profile;
        let (subtotal, item_count, main) = basket_totals(&self.basket);
        let discount_prob = if p.promo_lover {
            PROMO_LOVER_DISCOUNT_PROB
        } else {
            DISCOUNT_PROB
        };
        let discount = if self.rng.random_bool(discount_prob) {
            cents(subtotal * uniform(&mut self.rng, DISCOUNT_RATE))
        } else {
            0.0
        };
        let payment = if self.rng.random_bool(PREFERRED_PAYMENT_PROB) {
            p.payment
        } else {
            weighted(&mut self.rng, &PAYMENT_WEIGHTS) as u8
        };
        let placed = OrderEvent {
            time: t,
            id: 0,
            order: sink.new_order(),
            amount: cents(subtotal - discount),
            discount,
            customer: self.customer,
            device: ctx.device,
            item_count,
            category: main.category,
            brand: main.brand,
            status: STATUS_PLACED,
            payment,
            address: self.rng.random_range(0..p.addresses),
        };
        self.orders.push(placed);
        self.order_outcome(placed, kind);
    }

    /// `paid` (usually), `payment_failed` (maybe retried) or `cancelled`, a little later.
    pub(super) fn order_outcome(&mut self, placed: OrderEvent, kind: SessionKind) {
        let t = placed.time;
        match kind {
            SessionKind::FailedOrder => {
                let status = if self.rng.random_bool(FAILED_ORDER_PAYMENT_FAILED_PROB) {
                    STATUS_PAYMENT_FAILED
                } else {
                    STATUS_CANCELLED
                };
                let at = t + gap_ms(&mut self.rng, 5.0, 30.0);
                self.order_status(placed, status, at);
            }
            SessionKind::Purchase { refund } => {
                let at = t + gap_ms(&mut self.rng, 3.0, 40.0);
                self.pay(placed, at, Some(refund));
            }
            SessionKind::Browse | SessionKind::Abandon => {
                let u = self.rng.random::<f64>();
                if u < self.profile.fail_prob {
                    let failed_at = t + gap_ms(&mut self.rng, 5.0, 30.0);
                    self.order_status(placed, STATUS_PAYMENT_FAILED, failed_at);
                    if self.rng.random_bool(RETRY_AFTER_FAIL_PROB) {
                        let at = failed_at + gap_ms(&mut self.rng, 60.0, 240.0);
                        self.pay(placed, at, None);
                    } else if self.rng.random_bool(CANCEL_AFTER_FAIL_PROB) {
                        let at = failed_at + gap_ms(&mut self.rng, 600.0, 1800.0);
                        self.order_status(placed, STATUS_CANCELLED, at);
                    }
                } else if u < self.profile.fail_prob + self.profile.cancel_prob {
                    let at = t + gap_ms(&mut self.rng, 60.0, 1800.0);
                    self.order_status(placed, STATUS_CANCELLED, at);
                } else {
                    let at = t + gap_ms(&mut self.rng, 3.0, 40.0);
                    self.pay(placed, at, None);
                }
            }
        }
    }

    /// `paid`, and days later perhaps `refunded` (decided by `refund`, or by the customer's
    /// refund rate). Refunds come from the back office: no device.
    pub(super) fn pay(&mut self, placed: OrderEvent, at: i64, refund: Option<bool>) {
        self.order_status(placed, STATUS_PAID, at);
        let refund = match refund {
            Some(refund) => refund,
            None => self.rng.random_bool(self.profile.refund_prob),
        };
        if refund {
            let days = between(&mut self.rng, REFUND_DELAY_DAYS.0, REFUND_DELAY_DAYS.1);
            let refund_at = at + i64::from(days) * DAY_MS + self.rng.random_range(0..DAY_MS / 2);
            self.orders.push(OrderEvent {
                time: refund_at,
                status: STATUS_REFUNDED,
                device: NO_DEVICE,
                ..placed
            });
        }
    }

    pub(super) fn order_status(&mut self, placed: OrderEvent, status: u8, at: i64) {
        self.orders.push(OrderEvent {
            time: at,
            status,
            ..placed
        });
    }

    pub(super) fn click(&mut self, t: i64, ctx: &SessionCtx, page: u8, product: Product) {
        self.clicks.push(Click {
            time: t,
            id: 0,
            session: ctx.session,
            customer: self.customer,
            device: ctx.device,
            product,
            page,
            channel: ctx.channel,
        });
    }

    pub(super) fn cart(&mut self, t: i64, ctx: &SessionCtx, action: u8, product: Product, quantity: u8) {
        self.carts.push(CartEvent {
            time: t,
            id: 0,
            session: ctx.session,
            customer: self.customer,
            device: ctx.device,
            product,
            action,
            quantity,
        });
    }

    /// Place the session on its day (diurnal start, ending before midnight) and move its events
    /// into the sink. Events after `end` 23:59:59 (late refunds) have not happened yet: dropped.
    pub(super) fn deliver(&mut self, sink: &mut Sink, day: u32, span: i64) {
        let world = self.world;
        let hour = weighted(&mut self.rng, &HOUR_WEIGHTS) as i64;
        let start = hour * HOUR_MS + self.rng.random_range(0..HOUR_MS);
        let latest_start = (LAST_MS_OF_DAY - SESSION_END_MARGIN_MS - span).max(0);
        let base = world.day_start_ms(day) + start.min(latest_start);
        deliver_rows(world, &mut self.clicks, base, &mut sink.clicks, &mut sink.next_click);
        deliver_rows(world, &mut self.carts, base, &mut sink.carts, &mut sink.next_cart);
        deliver_rows(
            world,
            &mut self.orders,
            base,
            &mut sink.orders,
            &mut sink.next_order_event,
        );
    }
}

/// Subtotal, item count and main line (largest value) of a non-empty basket.
pub(super) fn basket_totals(basket: &[Line]) -> (f64, u16, Product) {
    let mut subtotal = 0.0;
    let mut items = 0u16;
    let mut main = basket[0].product;
    let mut main_value = f64::MIN;
    for line in basket {
        let value = unit_price(line.product) * f64::from(line.quantity);
        subtotal += value;
        items += u16::from(line.quantity);
        if value > main_value {
            main = line.product;
            main_value = value;
        }
    }
    (cents(subtotal), items, main)
}

pub(super) fn deliver_rows<R: EventRow>(
    world: &World,
    scratch: &mut Vec<R>,
    base_ms: i64,
    buckets: &mut [Vec<R>],
    next_id: &mut u64,
) {
    for mut row in scratch.drain(..) {
        let time = base_ms + row.time();
        if time > world.end_ms {
            continue;
        }
        *next_id += 1;
        row.stamp(time, *next_id);
        buckets[world.day_of(time)].push(row);
    }
}
