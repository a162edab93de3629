//! The buffers one request needs, and a small per-thread pool of them (catalog G1, issue 8).
//!
//! A connection holds its [`Buffers`] only while it reads or answers a request: it takes a box from its worker
//! thread's pool when request bytes arrive and gives it back as soon as the response is written. Live buffers
//! therefore follow the requests in flight, not the open connections, and a box that outlives its request does
//! not leave a hole between the long-lived allocations of other connections (`malloc_trim` cannot return such
//! holes). Taking and giving back is one thread-local `Vec` pop or push: no lock, no syscall.
//!
//! A connection's task may move to the other runtime thread in the middle of a request, so a box is often taken
//! from one thread's pool and given back to another's. Left alone, that drift fills one pool and empties the
//! other: at 64 keep-alive connections 7–15 % of requests found their pool empty and grew a fresh box (a dozen
//! allocations as its buffers grow), while the full pool freed what it could not keep. So a thread
//! whose pool is full moves half of it to a shared depot, and a thread whose pool is empty takes a batch from
//! there: one lock per [`BATCH`] boxes that change threads.
//!
//! This module must never hand out a box that still holds a previous request's bytes, parsed head or canonical
//! form, keep more than [`POOL_MAX_PER_THREAD`] boxes per thread, or pool a buffer whose capacity exceeds
//! [`POOLED_BUFFER_MAX`] (a 64 KiB request must not pin 64 KiB for good).

use std::cell::RefCell;
use std::sync::{Mutex, PoisonError};

use bytes::BytesMut;
use msp_core::canon::CanonicalRequest;

use super::head::RequestHead;
use super::limits::{POOL_MAX_PER_THREAD, POOLED_BUFFER_MAX};

/// What a connection needs only while it has a request to read or answer.
#[derive(Default)]
pub(super) struct Buffers {
    /// Bytes read and not yet used: the next head, or the current request's body.
    pub(super) rbuf: BytesMut,
    /// The current request's head, copied out of `rbuf` so the body can be consumed independently.
    pub(super) head_buf: Vec<u8>,
    pub(super) head: RequestHead,
    /// The decoded body of a chunked request.
    pub(super) body: Vec<u8>,
    /// The bytes going upstream.
    pub(super) send: Vec<u8>,
    /// Bytes read from the upstream connection and not yet relayed. Empty after every complete response that
    /// leaves the upstream connection open (spec §8.1: stray bytes close it).
    pub(super) ubuf: BytesMut,
    /// The bytes going to the client.
    pub(super) out: Vec<u8>,
    /// The current request in canonical form, while the rules match it.
    pub(super) canonical: CanonicalRequest,
}

impl Buffers {
    /// Empties every buffer and frees those over [`POOLED_BUFFER_MAX`] (the upstream buffer through
    /// [`Buffers::trim_vectors`]); the parsed head is reset, keeping only its vectors' capacity (bounded by the
    /// header-count limit).
    fn recycle(&mut self) {
        clear_and_trim(&mut self.rbuf);
        for v in self.byte_vectors() {
            v.clear();
        }
        self.trim_vectors();
        self.head.reset();
        self.canonical.clear();
    }

    fn byte_vectors(&mut self) -> [&mut Vec<u8>; 4] {
        [
            &mut self.head_buf,
            &mut self.body,
            &mut self.send,
            &mut self.out,
        ]
    }

    /// Frees the byte vectors, the upstream buffer and the canonical request's buffers that grew past
    /// [`POOLED_BUFFER_MAX`] (a large response grows the upstream buffer to 64 KiB); the others keep their bytes.
    /// The upstream buffer is empty between responses: it is cleared before each one is read.
    fn trim_vectors(&mut self) {
        clear_and_trim(&mut self.ubuf);
        for v in self.byte_vectors() {
            if v.capacity() > POOLED_BUFFER_MAX {
                *v = Vec::new();
            }
        }
        // A target of many short parameters spills the query's pairs to the heap, 24 bytes each.
        if self.canonical.capacity_bytes() > POOLED_BUFFER_MAX {
            self.canonical = CanonicalRequest::default();
        }
    }
}

/// Empties `b`, and frees its allocation when that is larger than [`POOLED_BUFFER_MAX`].
fn clear_and_trim(b: &mut BytesMut) {
    b.clear();
    // `capacity()` counts only the room after the read position, which `clear` leaves where the last `advance`
    // put it: on an emptied buffer `try_reclaim` rewinds to the start, and succeeds only when the whole
    // allocation is larger than the limit.
    if b.try_reclaim(POOLED_BUFFER_MAX + 1) {
        *b = BytesMut::new();
    }
}

/// Boxes moved between a thread's pool and the depot at once; also the most the depot keeps.
const BATCH: usize = POOL_MAX_PER_THREAD / 2;

/// A stack of boxes.
#[allow(clippy::vec_box)]
type Stack = Vec<Box<Buffers>>;

/// Boxes from threads whose pools were full, for threads whose pools are empty.
static DEPOT: Mutex<Stack> = Mutex::new(Vec::new());

thread_local! {
    // Boxes, not values: a box moves between a connection and the pool without being reallocated or copied.
    #[allow(clippy::vec_box)]
    static POOL: RefCell<Vec<Box<Buffers>>> = const { RefCell::new(Vec::new()) };
}

/// A box from this thread's pool (refilled from the depot when empty), or a new one.
fn take() -> Box<Buffers> {
    POOL.try_with(|p| {
        let mut pool = p.borrow_mut();
        if pool.is_empty() {
            refill(&mut pool, &DEPOT);
        }
        pool.pop()
    })
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// Recycles `b` into this thread's pool, making room in the depot when the pool is full. Freed when the thread
/// is ending.
fn give(mut b: Box<Buffers>) {
    let _ = POOL.try_with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() >= POOL_MAX_PER_THREAD {
            spill(&mut pool, &DEPOT);
        }
        b.recycle();
        pool.push(b);
    });
}

/// Moves up to [`BATCH`] boxes from `depot` to an empty `pool`.
fn refill(pool: &mut Stack, depot: &Mutex<Stack>) {
    let mut depot = depot.lock().unwrap_or_else(PoisonError::into_inner);
    let from = depot.len().saturating_sub(BATCH);
    pool.extend(depot.drain(from..));
}

/// Moves [`BATCH`] boxes from a full `pool` to `depot`; what the depot has no room for is freed, after the lock.
fn spill(pool: &mut Stack, depot: &Mutex<Stack>) {
    let mut spilled = pool.split_off(pool.len().saturating_sub(BATCH));
    let mut depot = depot.lock().unwrap_or_else(PoisonError::into_inner);
    let room = BATCH.saturating_sub(depot.len()).min(spilled.len());
    depot.extend(spilled.drain(..room));
    drop(depot);
    drop(spilled);
}

/// [`Buffers`] in one box, taken from the pool on the first write and given back by
/// [`OnDemand::release`] or when the connection ends: an idle connection holds one empty pointer instead of
/// eight buffer headers and a parsed head (catalog G1). Reading a released one sees empty buffers and takes
/// nothing.
#[derive(Default)]
pub(super) struct OnDemand(Option<Box<Buffers>>);

impl OnDemand {
    /// Gives the box back once a response is done, unless the client already sent part of its next request
    /// (pipelined bytes stay in `rbuf`, and only buffers that grew past [`POOLED_BUFFER_MAX`] are freed).
    pub(super) fn release(&mut self) {
        match self.0.take() {
            Some(b) if b.rbuf.is_empty() => give(b),
            Some(mut b) => {
                // The finished request's head and body are parsed again or overwritten before any use.
                b.trim_vectors();
                self.0 = Some(b);
            }
            None => {}
        }
    }

    /// Whether the connection holds a box (a request is being read or answered).
    #[cfg(test)]
    fn is_held(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for OnDemand {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            give(b);
        }
    }
}

impl std::ops::Deref for OnDemand {
    type Target = Buffers;
    fn deref(&self) -> &Buffers {
        static EMPTY: std::sync::OnceLock<Buffers> = std::sync::OnceLock::new();
        self.0
            .as_deref()
            .unwrap_or_else(|| EMPTY.get_or_init(Buffers::default))
    }
}

impl std::ops::DerefMut for OnDemand {
    fn deref_mut(&mut self) -> &mut Buffers {
        self.0.get_or_insert_with(take)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Buf;

    use msp_core::canon;

    use super::*;
    use crate::proxy::head;

    fn pool_len() -> usize {
        POOL.with(|p| p.borrow().len())
    }

    /// A recycled box must not carry a previous request's bytes or head into another connection.
    #[test]
    fn g1_pooled_buffers_come_back_empty() {
        let mut first = OnDemand::default();
        first
            .rbuf
            .extend_from_slice(b"GET /secret HTTP/1.1\r\nHost: h\r\nMetadata: true\r\n\r\n");
        let b = &mut *first;
        b.head_buf.extend_from_slice(&b.rbuf);
        b.rbuf.clear();
        head::parse_into(&b.head_buf, &mut b.head).unwrap();
        b.send.extend_from_slice(b"signed bytes");
        b.ubuf.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        b.out.extend_from_slice(b"response");
        b.body.extend_from_slice(b"body");
        b.canonical.path = canon::canonicalize_path(b"/secret").unwrap();
        b.canonical.query = canon::CanonicalQuery::parse(b"token=abc").unwrap();
        let given: *const Buffers = &*first;
        first.release();
        assert!(!first.is_held());

        let mut second = OnDemand::default();
        let b = &mut *second;
        assert!(
            std::ptr::eq(given, b),
            "the same box comes back: this thread's pool is a stack"
        );
        assert!(b.rbuf.is_empty() && b.ubuf.is_empty());
        assert!(
            b.head_buf.is_empty() && b.body.is_empty() && b.send.is_empty() && b.out.is_empty()
        );
        assert_eq!(b.head, RequestHead::default());
        assert_eq!(b.canonical, CanonicalRequest::default());
    }

    #[test]
    fn g1_pipelined_bytes_keep_the_box_and_big_buffers_are_not_pooled() {
        let mut conn = OnDemand::default();
        conn.rbuf.extend_from_slice(b"GET / HTTP/1.1\r\n"); // the next request, already here
        conn.out.reserve(POOLED_BUFFER_MAX * 4);
        conn.ubuf.reserve(POOLED_BUFFER_MAX * 8); // what a 64 KiB response leaves behind
        // What a target of 1,000 parameters leaves behind: 24 KB of pairs.
        let many = vec!["a=1"; 1000].join("&");
        conn.canonical.query = canon::CanonicalQuery::parse(many.as_bytes()).unwrap();
        assert!(conn.canonical.capacity_bytes() > POOLED_BUFFER_MAX);
        conn.release();
        assert!(conn.is_held(), "pipelined bytes stay with their connection");
        assert_eq!(&conn.rbuf[..], b"GET / HTTP/1.1\r\n");
        assert!(conn.out.capacity() <= POOLED_BUFFER_MAX);
        assert!(conn.canonical.capacity_bytes() <= POOLED_BUFFER_MAX);
        assert!(
            !conn.ubuf.try_reclaim(POOLED_BUFFER_MAX + 1),
            "a held box keeps no large upstream buffer"
        );

        conn.rbuf.clear();
        conn.ubuf.reserve(POOLED_BUFFER_MAX * 4);
        conn.release();
        assert!(!conn.is_held());
        let mut next = OnDemand::default();
        let pooled = &mut *next; // the box just given back: this thread's pool is a stack
        assert!(pooled.ubuf.capacity() <= POOLED_BUFFER_MAX);
    }

    /// A buffer advanced past a large head reports only the room after its read position: the pool must still
    /// see the whole allocation.
    #[test]
    fn g1_a_large_buffer_advanced_past_its_bytes_is_not_pooled() {
        let mut conn = OnDemand::default();
        conn.rbuf
            .extend_from_slice(&vec![b'x'; POOLED_BUFFER_MAX * 4]);
        conn.rbuf.advance(POOLED_BUFFER_MAX * 4 - 1);
        conn.ubuf
            .extend_from_slice(&vec![b'y'; POOLED_BUFFER_MAX * 4]);
        conn.ubuf.advance(POOLED_BUFFER_MAX * 4);
        conn.rbuf.clear();
        conn.release();
        assert!(!conn.is_held());
        let mut next = OnDemand::default();
        let pooled = &mut *next;
        assert!(pooled.rbuf.try_reclaim(1) || pooled.rbuf.capacity() == 0);
        assert!(!pooled.rbuf.try_reclaim(POOLED_BUFFER_MAX + 1));
        assert!(!pooled.ubuf.try_reclaim(POOLED_BUFFER_MAX + 1));
    }

    #[test]
    fn g1_the_pool_is_bounded() {
        let held: Vec<OnDemand> = (0..POOL_MAX_PER_THREAD + 10)
            .map(|_| {
                let mut d = OnDemand::default();
                d.rbuf.reserve(16);
                d
            })
            .collect();
        drop(held);
        // Full at 64, it moved half to the depot (shared with the other tests' threads) and took the last ten.
        assert_eq!(pool_len(), POOL_MAX_PER_THREAD - BATCH + 10);
    }

    fn boxes(n: usize) -> Stack {
        (0..n).map(|_| Box::default()).collect()
    }

    fn addresses(stack: &Stack) -> Vec<*const Buffers> {
        stack.iter().map(|b| &raw const **b).collect()
    }

    #[test]
    fn g1_boxes_given_back_on_a_full_thread_serve_an_empty_one() {
        let depot = Mutex::new(Vec::new());
        // The thread where requests end: its pool is full.
        let mut full = boxes(POOL_MAX_PER_THREAD);
        let moved = addresses(&full)[POOL_MAX_PER_THREAD - BATCH..].to_vec();
        spill(&mut full, &depot);
        assert_eq!(full.len(), POOL_MAX_PER_THREAD - BATCH);
        // The thread where requests start: its pool is empty, and gets the very boxes the other one gave back.
        let mut empty = Vec::new();
        refill(&mut empty, &depot);
        assert_eq!(addresses(&empty), moved);
        assert!(depot.lock().unwrap().is_empty());
    }

    #[test]
    fn g1_the_depot_is_bounded_and_frees_what_it_cannot_keep() {
        let depot = Mutex::new(boxes(BATCH - 5));
        let mut full = boxes(POOL_MAX_PER_THREAD);
        spill(&mut full, &depot);
        assert_eq!(
            depot.lock().unwrap().len(),
            BATCH,
            "room for five, the rest freed"
        );
        assert_eq!(full.len(), POOL_MAX_PER_THREAD - BATCH);
        let mut empty = Vec::new();
        refill(&mut empty, &depot);
        assert_eq!(empty.len(), BATCH);
    }
}
