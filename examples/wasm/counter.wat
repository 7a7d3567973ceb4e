;; A warm instance keeps state across calls (abi "export", warm true).
;;
;;   artifact_spec: {"artifact_type": "wasm", "location": "examples/wasm/counter.wat",
;;                   "config": {"abi": "export", "warm": true}}
;;   invoke("next") -> 1, then 2, 3, ... on the same instance
;;
;; Without "warm" every call gets a fresh store and always answers 1.
(module
  (global $count (mut i64) (i64.const 0))
  (func (export "next") (result i64)
    (global.set $count (i64.add (global.get $count) (i64.const 1)))
    (global.get $count)))
