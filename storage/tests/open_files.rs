//! Object databases share a bounded pool of file descriptors: many more objects than descriptors
//! stay open, read and write correctly, and survive closing and reopening. (Its own test binary:
//! the pool's limit is process-wide.)

use std::sync::Arc;

use denizen_storage::{Database, Durability, open_files, set_max_open_files};

const LIMIT: usize = 8;

fn descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// One committed event's worth of writes: a KV pair and a row.
fn write_round(db: &mut Database, object: usize, round: u64) {
    db.put(&format!("k{round}"), &(object as u64 * 1000 + round))
        .expect("put");
    db.exec(
        "INSERT INTO log(object, round) VALUES (?, ?)",
        (object as i64, round as i64),
    )
    .expect("insert");
    db.commit().expect("commit");
}

fn check(db: &mut Database, object: usize, rounds: u64) {
    for round in 0..rounds {
        let v: Option<u64> = db.get(&format!("k{round}")).expect("get");
        assert_eq!(
            v,
            Some(object as u64 * 1000 + round),
            "object {object} round {round}"
        );
    }
    let n: i64 = db
        .exec(
            "SELECT count(*) FROM log WHERE object = ?",
            (object as i64,),
        )
        .expect("count")
        .one()
        .expect("one");
    assert_eq!(n, rounds as i64);
}

#[test]
fn many_more_objects_than_descriptors_read_write_and_reopen() {
    set_max_open_files(LIMIT);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |i: usize| dir.path().join(format!("o{i}.sqlite"));
    let baseline = descriptors();

    // One thread, 64 objects open at once, writes interleaved across them.
    let mut dbs: Vec<Database> = (0..64)
        .map(|i| {
            let mut db = Database::open(&path(i), Durability::Normal).expect("open");
            db.exec("CREATE TABLE log(object INTEGER, round INTEGER)", [])
                .expect("create");
            db.commit().expect("commit");
            db
        })
        .collect();
    for round in 0..3 {
        for (i, db) in dbs.iter_mut().enumerate() {
            write_round(db, i, round);
            assert!(open_files() <= LIMIT, "{} files open", open_files());
        }
    }
    assert!(
        descriptors() <= baseline + LIMIT,
        "{} descriptors with a pool of {LIMIT} (baseline {baseline})",
        descriptors()
    );
    for (i, db) in dbs.iter_mut().enumerate() {
        check(db, i, 3);
    }
    drop(dbs);
    assert_eq!(open_files(), 0);

    // Reopened, everything is there.
    for i in 0..64 {
        let mut db = Database::open(&path(i), Durability::Normal).expect("reopen");
        check(&mut db, i, 3);
    }
    assert_eq!(open_files(), 0);

    // Four threads, 16 objects each, both durability modes: the pool takes descriptors from
    // files other threads are not using at that moment, never from one in use.
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let durability = if t % 2 == 0 {
                    Durability::Normal
                } else {
                    Durability::Fsync
                };
                let mut dbs: Vec<(usize, Database)> = (0..16)
                    .map(|k| {
                        let i = t * 16 + k;
                        let p = dir.path().join(format!("t{i}.sqlite"));
                        let mut db = Database::open(&p, durability).expect("open");
                        db.exec("CREATE TABLE log(object INTEGER, round INTEGER)", [])
                            .expect("create");
                        db.commit().expect("commit");
                        (i, db)
                    })
                    .collect();
                for round in 0..20 {
                    for (i, db) in &mut dbs {
                        write_round(db, *i, round);
                    }
                }
                for (i, db) in &mut dbs {
                    check(db, *i, 20);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(open_files(), 0);
    for i in 0..64 {
        let p = dir.path().join(format!("t{i}.sqlite"));
        let mut db = Database::open(&p, Durability::Normal).expect("reopen");
        check(&mut db, i, 20);
    }
}
