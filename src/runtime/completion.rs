//! PLACEHOLDER: replaced by the real completion queue from the `cq` branch before release.
#![allow(missing_docs, dead_code)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cqe {
    pub user_data: u64,
    pub res: i64,
    pub flags: u32,
    pub worker: u32,
}
pub struct CompletionQueue {
    q: std::sync::Mutex<std::collections::VecDeque<Cqe>>,
    owed: std::sync::atomic::AtomicU64,
}
impl CompletionQueue {
    pub const MAX_CAPACITY: u32 = 1 << 20;
    pub fn wait(
        &self,
        _o: &mut [Cqe],
        _m: usize,
        _t: Option<std::time::Duration>,
    ) -> std::io::Result<usize> {
        todo!()
    }
    pub fn fd(&self) -> i32 {
        todo!()
    }
    pub fn new(_c: u32) -> std::io::Result<Self> {
        Ok(Self {
            q: Default::default(),
            owed: Default::default(),
        })
    }
    pub fn post(&self, c: Cqe) {
        self.q.lock().unwrap().push_back(c)
    }
    pub fn poll(&self, out: &mut [Cqe]) -> usize {
        let mut q = self.q.lock().unwrap();
        let mut n = 0;
        while n < out.len() {
            match q.pop_front() {
                Some(c) => {
                    out[n] = c;
                    n += 1
                }
                None => break,
            }
        }
        n
    }
    pub fn reserve(&self) {
        self.owed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    pub fn post_reserved(&self, c: Cqe) {
        self.post(c);
        self.owed.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
    pub fn release_reservation(&self) {
        self.owed.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
    pub fn owed(&self) -> u64 {
        self.owed.load(std::sync::atomic::Ordering::SeqCst)
    }
}
