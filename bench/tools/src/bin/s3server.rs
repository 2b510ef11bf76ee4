//! s3server: a local S3 server for the repository benchmark (bench/repo.py): s3s-fs, the
//! implementation the main crate's tests run in-process, serving a directory (a bucket
//! is a directory in it) on 127.0.0.1, with the two fixes the tests' server has
//! (tests/common/s3.rs): ListObjectsV2 with an empty `delimiter=` lists recursively, as
//! AWS does (restic sends it), and a conditional PutObject (`If-None-Match: *`) is
//! atomic, as on AWS (s3s-fs checks the key is free, then takes the body: 20 racing
//! creates of one key got 14 successes; shard runs into it built units twice). Counts the requests it serves by
//! method and, with `--stats`, keeps the counts in a JSON file (rewritten within 50 ms
//! of a change). Runs until killed. Does file and network I/O.
//!
//! Usage: s3server --root DIR --port PORT --access-key K --secret-key S [--stats FILE]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// s3s-fs with ListObjectsV2's empty delimiter taken as none, and conditional PUTs
/// taking turns.
struct Fs(s3s_fs::FileSystem, tokio::sync::Mutex<()>);

/// The `s3s::S3` impl of `Fs`: the methods listed are passed to s3s-fs as they are.
macro_rules! delegating_impl {
    ($($name:ident: $input:ident => $output:ident),* $(,)?) => {
        #[async_trait::async_trait]
        impl s3s::S3 for Fs {
            $(
                async fn $name(
                    &self,
                    req: s3s::S3Request<s3s::dto::$input>,
                ) -> s3s::S3Result<s3s::S3Response<s3s::dto::$output>> {
                    self.0.$name(req).await
                }
            )*

            async fn put_object(
                &self,
                req: s3s::S3Request<s3s::dto::PutObjectInput>,
            ) -> s3s::S3Result<s3s::S3Response<s3s::dto::PutObjectOutput>> {
                let _turn = match req.input.if_none_match {
                    Some(_) => Some(self.1.lock().await),
                    None => None,
                };
                self.0.put_object(req).await
            }

            async fn list_objects_v2(
                &self,
                mut req: s3s::S3Request<s3s::dto::ListObjectsV2Input>,
            ) -> s3s::S3Result<s3s::S3Response<s3s::dto::ListObjectsV2Output>> {
                if req.input.delimiter.as_deref() == Some("") {
                    req.input.delimiter = None;
                }
                self.0.list_objects_v2(req).await
            }
        }
    };
}

delegating_impl! {
    create_bucket: CreateBucketInput => CreateBucketOutput,
    delete_object: DeleteObjectInput => DeleteObjectOutput,
    delete_objects: DeleteObjectsInput => DeleteObjectsOutput,
    get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput,
    get_object: GetObjectInput => GetObjectOutput,
    head_bucket: HeadBucketInput => HeadBucketOutput,
    head_object: HeadObjectInput => HeadObjectOutput,
    list_buckets: ListBucketsInput => ListBucketsOutput,
    list_objects: ListObjectsInput => ListObjectsOutput,
}

/// Requests served, by method.
type Counts = Arc<Mutex<BTreeMap<String, u64>>>;

/// The S3 service, counting what it serves.
#[derive(Clone)]
struct Counted {
    inner: s3s::service::S3Service,
    counts: Counts,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Counted {
    type Response = s3s::HttpResponse;
    type Error = s3s::HttpError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(req.method().to_string())
            .or_default() += 1;
        hyper::service::Service::call(&self.inner, req)
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: s3server --root DIR --port PORT --access-key K --secret-key S [--stats FILE]"
    );
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut root, mut port, mut key, mut secret, mut stats) = (None, None, None, None, None);
    while let Some(a) = args.next() {
        let mut v = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--root" => root = Some(PathBuf::from(v())),
            "--port" => port = Some(v().parse::<u16>().unwrap_or_else(|_| usage())),
            "--access-key" => key = Some(v()),
            "--secret-key" => secret = Some(v()),
            "--stats" => stats = Some(PathBuf::from(v())),
            _ => usage(),
        }
    }
    let (Some(root), Some(port), Some(key), Some(secret)) = (root, port, key, secret) else {
        usage()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("start the runtime");
    let fs = Fs(
        s3s_fs::FileSystem::new(&root)
            .unwrap_or_else(|e| panic!("cannot serve {}: {e:?}", root.display())),
        tokio::sync::Mutex::new(()),
    );
    let mut b = s3s::service::S3ServiceBuilder::new(fs);
    b.set_auth(s3s::auth::SimpleAuth::from_single(key, secret));
    let counts = Counts::default();
    let service = Counted {
        inner: b.build(),
        counts: counts.clone(),
    };
    if let Some(path) = stats {
        let counts = counts.clone();
        std::thread::spawn(move || {
            let mut last = BTreeMap::new();
            loop {
                std::thread::sleep(std::time::Duration::from_millis(50));
                let now = counts.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if now != last {
                    let json: Vec<String> =
                        now.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
                    let tmp = path.with_extension("tmp");
                    std::fs::write(&tmp, format!("{{{}}}\n", json.join(", ")))
                        .and_then(|()| std::fs::rename(&tmp, &path))
                        .expect("write the stats file");
                    last = now;
                }
            }
        });
    }
    runtime.block_on(async move {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1:{port}: {e}"));
        eprintln!(
            "s3server: serving {} on http://127.0.0.1:{port}",
            root.display()
        );
        let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
}
