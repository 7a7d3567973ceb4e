;; The memory ABI (abi "export"): strings and documents through linear memory.
;;
;;   artifact_spec: {"artifact_type": "wasm", "location": "examples/wasm/reverse.wat",
;;                   "config": {"abi": "export", "input_format": "raw"}}
;;   invoke("reverse", "stressed")  ->  "desserts"
;;
;; The host calls alloc(len), writes the input there, calls reverse(ptr, len) and
;; reads the result at (ret >> 32) with length (ret & 0xffffffff). A bump
;; allocator is enough: by default every call gets a fresh store.
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func $alloc (export "alloc") (param $len i32) (result i32) (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $len)))
    (block $fits
      (loop $grow
        (br_if $fits (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
        (br $grow)))
    (local.get $p))
  (func (export "reverse") (param $p i32) (param $n i32) (result i64) (local $o i32) (local $i i32)
    (local.set $o (call $alloc (local.get $n)))
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (i32.store8
          (i32.add (local.get $o) (local.get $i))
          (i32.load8_u (i32.sub (i32.add (local.get $p) (local.get $n)) (i32.add (local.get $i) (i32.const 1)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each)))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $o)) (i64.const 32)) (i64.extend_i32_u (local.get $n)))))
