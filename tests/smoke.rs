#[test]
fn smoke() {
    let rt = veloq::Runtime::builder().workers(2).build().unwrap();
    let h = rt
        .spawn_local_to(1, || async {
            let l = veloq::spawn_local(async { 40 }).unwrap();
            assert_eq!(veloq::worker_index(), Some(1));
            l.await.unwrap() + 2
        })
        .unwrap();
    assert_eq!(rt.block_on(h).unwrap(), 42);
    let hs: Vec<_> = (0..10000)
        .map(|i| rt.spawn(async move { i }).unwrap())
        .collect();
    let sum: u64 = rt.block_on(async {
        let mut s = 0;
        for h in hs {
            s += h.await.unwrap()
        }
        s
    });
    assert_eq!(sum, (0..10000).sum());
    rt.shutdown(None).unwrap();
}
