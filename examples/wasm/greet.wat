;; A WASI command (abi "wasi", the default): greets whatever arrives on stdin.
;;
;;   artifact_spec: {"artifact_type": "wasm", "location": "examples/wasm/greet.wat",
;;                   "config": {"input_format": "raw"}}
;;   invoke("greet", "Ada")  ->  "hello, Ada"
;;
;; stdin is the call's params, stdout the result, stderr the log, argv[1] the
;; function name (unused here).
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello, ")
  (data (i32.const 32) "greeted someone\n")
  ;; iovec at 0; counts at 8; "hello, " at 16; the name is read to 64 onwards
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start") (local $n i32)
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 1024))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (local.set $n (i32.load (i32.const 8)))
    (call $write (i32.const 1) (i32.const 16) (i32.const 7))
    (call $write (i32.const 1) (i32.const 64) (local.get $n))
    (call $write (i32.const 2) (i32.const 32) (i32.const 16))))
