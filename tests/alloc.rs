//! Scalar reads never touch the heap: counted with a global allocator, not timed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use flagpole::{Flag, Flags, ScriptedResponse, ScriptedTransport};
use serde_json::json;

struct Counting;

thread_local! {
    // Counts only on the thread that asks, so other tests' threads cannot disturb the count.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // try_with: thread-locals may be gone while a thread shuts down.
        let _ = COUNTING.try_with(|on| {
            if on.get() {
                let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
            }
        });
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    ALLOCATIONS.with(|n| n.get())
}

#[test]
fn scalar_reads_do_not_allocate() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let transport = ScriptedTransport::new();
    transport.push(ScriptedResponse::json(&json!([
        {"on": true}, {"n": 42}, {"x": 2.5}, {"s": "text"}, {"o": {"k": 1}}
    ])));
    let flags = runtime.block_on(async {
        let flags = Flags::builder().transport(transport).build().unwrap();
        flags.refresh().await.unwrap();
        flags
    });
    // The first load on a thread registers it with arc-swap once; reads after that are counted.
    assert_eq!(flags.get_bool("on"), Some(true));

    let mut sink = 0usize;
    let count = allocations_during(|| {
        for _ in 0..10_000 {
            sink += usize::from(flags.get_bool("on").unwrap());
            sink += flags.get_i64("n").unwrap() as usize;
            sink += flags.get_f64("x").unwrap() as usize;
            sink += flags.get_str("s").unwrap().len();
            // Misses and wrong types take the same path.
            sink += usize::from(flags.get_bool("missing").is_none());
            sink += usize::from(flags.get_i64("s").is_none());
            sink += usize::from(flags.get_bool("missing").unwrap_or(true));
        }
    });
    assert_eq!(sink, 10_000 * (1 + 42 + 2 + 4 + 1 + 1 + 1));
    assert_eq!(count, 0, "scalar reads allocated {count} times");

    // Typed definitions: served values, missing flags and wrong types (the Flag's default),
    // strings and string defaults, on the handle and on a snapshot; the first read included (it
    // resolves the slot), except for a string default, allocated once per Flag at its first use.
    static ON: Flag<bool> = Flag::new("on", false);
    static N: Flag<i64> = Flag::new("n", 0);
    static X: Flag<f64> = Flag::new("x", 0.0);
    static S: Flag<&'static str> = Flag::new("s", "default");
    static MISSING: Flag<&'static str> = Flag::new("missing", "default");
    static WRONG: Flag<i64> = Flag::new("s", 3);
    static ABSENT: Flag<bool> = Flag::new("absent", true);
    let first = allocations_during(|| assert_eq!(&*flags.value(&MISSING), "default"));
    assert_eq!(
        first, 1,
        "a string default is allocated once, at its first use"
    );
    let _ = flags.value(&WRONG); // its one debug log (none without a subscriber) outside the count
    let snapshot = flags.snapshot();
    let mut sink = 0usize;
    let count = allocations_during(|| {
        for _ in 0..10_000 {
            sink += usize::from(flags.value(&ON));
            sink += flags.value(&N) as usize;
            sink += flags.value(&X) as usize;
            sink += flags.value(&S).len();
            sink += flags.value(&MISSING).len();
            sink += flags.value(&WRONG) as usize;
            sink += usize::from(flags.value(&ABSENT));
            sink += usize::from(snapshot.value(&ON)) + snapshot.value(&N) as usize;
            sink += snapshot.value(&S).len() + snapshot.value(&MISSING).len();
            sink += snapshot.get_str("s").unwrap().len();
            sink += snapshot.get_ref("n").and_then(|v| v.as_u64()).unwrap() as usize;
        }
    });
    assert_eq!(
        sink,
        10_000 * (1 + 42 + 2 + 4 + 7 + 3 + 1 + 43 + 11 + 4 + 42)
    );
    assert_eq!(count, 0, "typed reads allocated {count} times");

    // The counter itself works: a JSON read clones, and that is counted.
    let count = allocations_during(|| {
        let value = flags.get("o").unwrap();
        assert_eq!(value["k"], 1);
    });
    assert!(count > 0, "the counting allocator saw nothing");
}
